"""The contract of an inspection engine: what its users (Home Assistant's integration, and any
other program) may do with one, whether it runs in this process (`Engine`) or as a service
reached over HTTP (`RemoteEngine`).

Everything is async and typed; failures are `EdgeInspectorError` subclasses told apart by
their type, never by their text:

- `StationNotFoundError`, `IncidentNotFoundError`, `ImageNotFoundError` (`NotFoundError`);
- `InputError`: a malformed command (its `code` and `status` say which);
- `RefusedError`: a command that cannot be carried out now (a station that is not running, an
  action already decided, no VLM, no manuals);
- `ImageDecodeError`, `SourceError`, `ModelError`: a picture, a camera or a model failed;
- `EngineUnreachableError`, `EngineAuthError` (`EngineConnectionError`): an engine service that
  does not answer, or refuses the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from .events import (
        ActionRecord,
        Incident,
        IncidentState,
        InspectionResult,
        QualityReport,
        StationState,
    )
    from .manuals import ManualHit
    from .sinks import EventSink
    from .store.history import ClassCount, RateBucket
    from .tools.actions import ActionPort

__all__ = ["ImageKind", "InspectionEngine", "VlmStatus"]

type ImageKind = Literal["frame", "crop", "raw"]


@dataclass(frozen=True, slots=True)
class VlmStatus:
    """How the VLM stage is doing."""

    error: str | None = None  # None: it answers
    model_missing: bool = False  # the configured model is not on the Ollama server
    breaker: str | None = None  # closed, open or half_open
    queue_depth: int | None = None  # incidents waiting for the model or being answered
    enriched: int | None = None  # incidents the model has finished since the engine started
    oldest_pending_s: float | None = None  # the oldest unanswered incident's wait (None: none)
    skipped: int | None = None  # incidents over `vlm.max_age`, since the engine started
    coalesced: int | None = None  # repeats answered by another incident's call, since then

    @property
    def ok(self) -> bool:
        return self.error is None


class InspectionEngine(Protocol):
    """An inspection engine, in this process or behind its HTTP API."""

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start (in process: load the models, open the cameras; remote: read the stations
        and follow the events). EngineUnreachableError or EngineAuthError for a service."""

    async def stop(self) -> None: ...

    def add_sink(self, sink: EventSink) -> None:
        """Tell `sink` every event from now on (inspections, incidents, states, alerts, and a
        service's connection going down and up)."""

    def set_service_port(self, port: ActionPort) -> None:
        """What carries out the VLM's `service` actions (Home Assistant's services)."""

    @property
    def connected(self) -> bool:
        """False while an engine service does not answer (always True in process)."""

    @property
    def token_refused(self) -> bool:
        """The engine service refused the token when last asked (its token changed): ask
        for the new one. Always False in process."""

    # -- stations ---------------------------------------------------------------------------

    def states(self) -> list[StationState]:
        """Every configured station's state, running or not, as last known."""

    def is_running(self, station_id: str) -> bool:
        """The station exists and started (False for one whose model or camera failed to
        start: its state says why)."""

    async def set_enabled(self, station_id: str, enabled: bool) -> StationState: ...

    async def set_threshold(
        self, station_id: str, class_name: str | None, confidence: float
    ) -> StationState:
        """One defect class's threshold, or every class's with `class_name` None."""

    async def inspect_image(
        self,
        station_id: str,
        image: bytes,
        *,
        part_id: str | None = None,
        lot_id: str | None = None,
    ) -> InspectionResult:
        """Inspect a picture handed in (a push station's)."""

    async def inspect_now(
        self, station_id: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        """Inspect one fresh frame of the station's own camera now."""

    # -- history ----------------------------------------------------------------------------

    async def incidents(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Incident]:
        """Newest first; `limit` at most 500."""

    async def incident(self, incident_id: str) -> Incident | None: ...

    async def last_incident(self, station_id: str | None = None) -> Incident | None: ...

    async def incident_image(self, incident_id: str, kind: ImageKind = "frame") -> bytes:
        """An incident's annotated frame, its crop or the raw frame (JPEG).
        IncidentNotFoundError, ImageNotFoundError (not kept, or removed by retention)."""

    async def counts_by_class(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[ClassCount]: ...

    async def quality(
        self, *, period: str | None = None, station_id: str | None = None
    ) -> QualityReport:
        """The quality figures over a range said in words ("this shift", "last shift",
        "today", "since 6am", "the last 2 hours"; default: the published range), of one
        station or all. PeriodError (an InputError) for a range not understood."""

    def latest_quality(self) -> QualityReport | None:
        """The published figures as last computed (told to sinks by `on_quality`)."""

    async def rate_series(
        self, *, station_id: str | None, since: datetime, until: datetime, bucket: float
    ) -> list[RateBucket]:
        """Counts per `bucket` seconds (at least 10)."""

    # -- people's verdicts and decisions ----------------------------------------------------

    async def set_verdict(
        self, incident_id: str, state: IncidentState, *, by: str, note: str | None = None
    ) -> Incident:
        """An operator's verdict on an incident (IncidentNotFoundError)."""

    async def report_missed_defect(
        self,
        station_id: str,
        defect_class: str,
        *,
        by: str,
        part_id: str | None = None,
        lot_id: str | None = None,
        note: str | None = None,
    ) -> Incident: ...

    async def resolve_action(
        self, incident_id: str, request_id: str, *, approve: bool, by: str
    ) -> ActionRecord:
        """Approve or decline an action the VLM asked a person to confirm."""

    # -- manuals and the VLM ----------------------------------------------------------------

    async def search_manuals(self, query: str, *, limit: int = 3) -> list[ManualHit]:
        """Keyword search of the equipment manuals (ManualsNotIndexedError: none)."""

    async def vlm_status(self) -> VlmStatus | None:
        """The VLM stage's health; None when no VLM is configured."""
