"""The one exception tree of Edge Inspector: callers catch `EdgeInspectorError`."""

from __future__ import annotations

from .redact import redact


class EdgeInspectorError(Exception):
    """Root of every error Edge Inspector raises on purpose. Its text never holds a credential:
    URLs' user information and secret query values are redacted when it is made (`redact`), so
    whatever quotes the error (a station's state, the API, MQTT, a log line) is clean too."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(EdgeInspectorError):
    """The configuration is malformed; the message names the file, the key and what was expected."""

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(redact(p) for p in problems or (message,))  # like the message


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


class InputError(EdgeInspectorError):
    """A client sent something malformed (over HTTP, MQTT, a Home Assistant service); `code`
    names the kind and `status` the HTTP status it is answered with."""

    def __init__(self, message: str, *, code: str = "invalid_field", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class NotFoundError(EdgeInspectorError):
    """What was asked for does not exist (a station, an incident, an image): answered 404."""


class StationNotFoundError(NotFoundError):
    """A command named a station the engine does not have."""


class IncidentNotFoundError(NotFoundError):
    """No incident with that id (or it was removed by retention)."""


class ImageNotFoundError(NotFoundError):
    """An incident or inspection has no such picture (never kept, or removed by retention)."""


class RefusedError(EdgeInspectorError):
    """A well-formed command the engine will not carry out now (a disabled station, an action
    already decided, no VLM configured): answered 409."""


class ManualsNotIndexedError(RefusedError):
    """The engine has no equipment manuals to search."""


class EngineConnectionError(EdgeInspectorError):
    """The engine service could not be used: it does not answer, or refuses the token."""


class EngineUnreachableError(EngineConnectionError):
    """The engine service does not answer (connection refused, timed out, reset)."""


class EngineAuthError(EngineConnectionError):
    """The engine service refuses the token (a wrong, missing or revoked one)."""
