"""The one exception tree of Edge Inspector: callers catch `EdgeInspectorError`."""

from __future__ import annotations


class EdgeInspectorError(Exception):
    """Root of every error Edge Inspector raises on purpose."""


class ConfigError(EdgeInspectorError):
    """The configuration is malformed; the message names the file, the key and what was expected."""

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


class SourceError(EdgeInspectorError):
    """A frame source could not deliver a frame (camera unreachable, stream ended, bad data)."""


class SourceExhaustedError(SourceError):
    """A finite source (a folder, a file list, a recorded video) has no more frames."""


class ImageDecodeError(EdgeInspectorError):
    """Bytes that should be an image are not one (corrupt, truncated, empty or too large)."""


class ModelError(EdgeInspectorError):
    """A detection model could not be loaded or run."""


class StoreError(EdgeInspectorError):
    """The local store (SQLite history, images) failed."""


class StationNotFoundError(EdgeInspectorError):
    """A command named a station the engine does not have."""
