"""Local state: SQLite history of inspections and incidents, images on disk, retention."""

from .history import ClassCount, InspectionCounts, RetentionReport, Store

__all__ = ["ClassCount", "InspectionCounts", "RetentionReport", "Store"]
