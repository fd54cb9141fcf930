"""Equipment manuals: a SQLite FTS5 (BM25) index of Markdown, text and PDF files."""

from .index import IndexReport, ManualHit, ManualIndex

__all__ = ["IndexReport", "ManualHit", "ManualIndex"]
