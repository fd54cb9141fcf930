"""Local state: SQLite history of inspections and incidents, images on disk, retention."""

from .history import (
    ClassCount,
    FeedbackCounts,
    InspectionCounts,
    RateBucket,
    RetentionReport,
    Store,
)

__all__ = [
    "ClassCount",
    "FeedbackCounts",
    "InspectionCounts",
    "RateBucket",
    "RetentionReport",
    "Store",
]
