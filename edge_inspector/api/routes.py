"""The HTTP API's routes, declared once: `ApiServer` registers exactly these (api/server.py) and
the OpenAPI document is generated from them (api/openapi.py), so no route goes undocumented.

A route names its method, path and the `ApiServer` method that answers it; what it does
(summary, description); whether it needs the token; its query parameters (its path parameters
come from `PATH_PARAMETERS`, by the names in its path); its request body (a command model of
`commands`, validated strictly by the server, or raw media); its answer (a model, or a `Reply`
for anything else); and the error statuses it may answer beyond those every route may, which
the document adds itself: 403 (another site's page), 401 (when it needs the token), 413 and 415
(when its body is JSON).

Adding a route is one entry in `ROUTES` (and its handler in `ApiServer`); a JSON answer the
handler builds as a plain dict is described by a model here, for the document only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from ..commands import (
    EnabledBody,
    InspectCommand,
    MissedDefectBody,
    ResolveBody,
    ThresholdBody,
    VerdictBody,
)
from ..events import (
    ActionRecord,
    Incident,
    InspectionResult,
    OperatorAlert,
    QualityReport,
    StationState,
    Verdict,
)

__all__ = [
    "ERRORS",
    "PAGE",
    "PATH_PARAMETERS",
    "RANGE",
    "ROUTES",
    "Error",
    "Health",
    "IncidentPage",
    "InspectionPage",
    "ManualResults",
    "Param",
    "Reply",
    "Route",
    "Series",
    "StationList",
    "Stats",
]

type Schema = Mapping[str, Any]  # a JSON Schema, as the document carries it
type Media = Mapping[str, Schema]  # content that is not a JSON model: media type -> schema


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter."""

    name: str
    schema: Schema
    description: str
    required: bool = False  # path parameters always are


@dataclass(frozen=True, slots=True)
class Reply:
    """A route's successful answer: a JSON model, other media, or nothing (the websocket's)."""

    content: type[BaseModel] | Media | None
    description: str = "OK"
    status: int = 200


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the API: how the server registers it and how the document describes it."""

    method: Literal["get", "post"]
    path: str
    handler: str  # the ApiServer method that answers it
    summary: str
    reply: type[BaseModel] | Reply  # a bare model: 200, JSON
    errors: tuple[int, ...] = ()  # statuses of ERRORS beyond 401, 403, 413 and 415 (derived)
    query: tuple[Param, ...] = ()
    body: type[BaseModel] | Media | None = None  # a model: JSON, required if it has required fields
    auth: bool = True  # False: no token needed (the server lets every method of its path through)
    description: str | None = None
    messages: tuple[type[BaseModel], ...] = ()  # further models it sends (the websocket's events)


# -- the answers the handlers build as dicts (described here; the server does not use these) ---

Count = Annotated[int, Field(ge=0)]


class ErrorDetail(BaseModel):
    code: str
    message: str


class Error(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class VlmDetail(BaseModel):
    error: str | None
    model_missing: bool = Field(description="The Ollama server lacks the configured model.")
    breaker: Literal["closed", "open", "half_open"] | None
    queue_depth: int | None = Field(description="Incidents waiting for the model or answered now.")
    enriched: int | None
    oldest_pending_s: float | None = Field(
        description="Seconds the oldest incident not answered yet has waited (null: none)."
    )
    skipped: int | None = Field(
        description="Incidents marked `skipped` (over `vlm.max_age`) since the engine started."
    )
    coalesced: int | None = Field(
        description="Repeats answered by another incident's call since the engine started."
    )


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    uptime_s: float
    stations: dict[str, str] = Field(description="Each station: `ok`, or what is wrong.")
    vlm: Literal["ok", "degraded"] | None
    vlm_detail: VlmDetail | None = Field(description="The VLM stage (null: none configured).")
    mqtt: Literal["connected", "disconnected"] | None


class StationList(BaseModel):
    stations: list[StationState]


class InspectionSummary(BaseModel):
    inspection_id: str
    station_id: str
    timestamp: datetime
    verdict: Verdict
    part_id: str | None
    lot_id: str | None
    defect_classes: list[str]
    detections: int
    latency_ms: float
    detail: bool = Field(description="The full record is kept (GET /api/inspections/{id}).")


class InspectionPage(BaseModel):
    inspections: list[InspectionSummary]
    limit: int
    offset: int


class IncidentPage(BaseModel):
    incidents: list[Incident]
    limit: int
    offset: int


class Feedback(BaseModel):
    confirmed: Count
    rejected: Count
    missed: Count


class Stats(BaseModel):
    inspections: Count
    failed: Count
    by_class: dict[str, Count]
    feedback: Feedback


class SeriesPoint(BaseModel):
    start: datetime
    inspections: Count
    failed: Count
    incidents: Count


class Series(BaseModel):
    bucket_s: int
    points: list[SeriesPoint]


class ManualPassage(BaseModel):
    reference: str
    file: str
    section: str
    page: int | None
    excerpt: str
    score: float


class ManualResults(BaseModel):
    indexed: bool
    results: list[ManualPassage]


# -- the pieces routes share ------------------------------------------------------------------

# status -> (its name under components/responses, its description); every answer is an Error
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed"),
    401: ("Unauthorized", "No valid bearer token"),
    403: (
        "Forbidden",
        "Another site's page (its Origin is not this server), or a Host that is not an address "
        "or localhost while no token is set (DNS rebinding)",
    ),
    404: ("NotFound", "No such station, incident or image"),
    409: ("Refused", "The engine refuses (station disabled, not a push station...)"),
    413: ("TooLarge", "The body is larger than the route takes"),
    415: ("NotJson", "The body is not sent as application/json"),
    422: ("NotAPicture", "Not a picture"),
}

_TEXT: Schema = {"type": "string"}
_BINARY: Schema = {"type": "string", "format": "binary"}
_TIME: Schema = {"type": "string", "format": "date-time"}
JPEG = Reply({"image/jpeg": _BINARY}, "JPEG")

PATH_PARAMETERS = {
    p.name: p
    for p in (
        Param("station_id", _TEXT, "The station's id."),
        Param("incident_id", _TEXT, "The incident's id."),
        Param("inspection_id", _TEXT, "Its id."),
        Param("kind", {"enum": ["frame", "crop", "raw"]}, "Which."),
        Param("request_id", _TEXT, "The request."),
    )
}

RANGE = (
    Param("station_id", _TEXT, "Only this station."),
    Param("since", _TIME, "From (ISO 8601)."),
    Param("until", _TIME, "Before (ISO 8601)."),
)
PAGE = (
    *RANGE,
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Page size."),
    Param("offset", {"type": "integer", "minimum": 0, "default": 0}, "Skip this many."),
)

_WEBSOCKET = (
    'Messages are JSON `{"type": ..., "data": ...}` with type `inspection` (InspectionResult), '
    "`incident` and `incident_update` (Incident), `missed_defect` (Incident: a defect a person "
    "reported that a station passed), `station_state` (StationState), `alert` (OperatorAlert), "
    "`quality` (QualityReport: the published figures, recomputed) and `shift_report` "
    "(QualityReport: a shift has ended). On connecting: every station's state, the latest "
    "`quality`, then with `since` the incidents stored since then "
    '(each with `replay: true`), then `{"type": "ready"}`. A client too slow to keep up (1000 '
    "messages behind, or one message not taken in 10 s) is closed with code 1013 and reconnects "
    "with `since`. A client connected with `actions=1` (Home Assistant in remote mode) carries "
    'out the engine\'s `service` actions: it gets `{"type": "action_call", "data": {call_id, '
    'action, arguments, context}}` and answers `{"type": "action_result", "call_id", "ok", '
    '"result" | "error"}`.'
)

# -- the routes, in the order the server registers them ----------------------------------------

ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/api/health",
        "health",
        "Liveness and what is degraded (no token needed)",
        Health,
        auth=False,
    ),
    Route(
        "get",
        "/metrics",
        "metrics_text",
        "Prometheus metrics (text exposition format)",
        Reply({"text/plain": _TEXT}),
    ),
    Route(
        "get",
        "/api/openapi.json",
        "openapi",
        "This description (no token needed)",
        Reply({"application/json": {"type": "object"}}),
        auth=False,
    ),
    Route("get", "/api/stations", "stations", "Every station's state", StationList),
    Route(
        "get",
        "/api/stations/{station_id}",
        "station",
        "One station's state",
        StationState,
        errors=(400, 404),
    ),
    Route(
        "post",
        "/api/stations/{station_id}/enabled",
        "set_enabled",
        "Pause or resume inspection",
        StationState,
        errors=(400, 404),
        body=EnabledBody,
    ),
    Route(
        "post",
        "/api/stations/{station_id}/thresholds",
        "set_threshold",
        "Set a defect class's confidence threshold (no class: every class)",
        StationState,
        errors=(400, 404),
        body=ThresholdBody,
    ),
    Route(
        "post",
        "/api/stations/{station_id}/inspect",
        "inspect",
        "Inspect a fresh frame from the station's camera now",
        InspectionResult,
        errors=(400, 404, 409),
        body=InspectCommand,
    ),
    Route(
        "post",
        "/api/stations/{station_id}/frames",
        "push_frame",
        "Inspect a picture sent in the body (stations with a `push` source)",
        InspectionResult,
        errors=(400, 404, 409, 422),
        query=(
            Param("part_id", _TEXT, "The part's id."),
            Param("lot_id", _TEXT, "The lot's id."),
        ),
        body={"image/jpeg": _BINARY, "image/png": _BINARY},
    ),
    Route(
        "get",
        "/api/stations/{station_id}/snapshot.jpg",
        "snapshot",
        "The last inspected frame with its boxes and labels",
        JPEG,
        errors=(404,),
    ),
    Route(
        "get",
        "/api/stations/{station_id}/stream.mjpeg",
        "mjpeg",
        "The annotated live view (MJPEG, multipart/x-mixed-replace)",
        Reply({"multipart/x-mixed-replace": _TEXT}, "MJPEG stream"),
        errors=(404,),
    ),
    Route(
        "get",
        "/api/inspections",
        "inspections",
        "Inspections, newest first (paged)",
        InspectionPage,
        errors=(400,),
        query=(*PAGE, Param("verdict", {"enum": ["pass", "fail"]}, "Only this verdict.")),
    ),
    Route(
        "get",
        "/api/inspections/{inspection_id}",
        "inspection",
        "One inspection's full record (kept for failures and parts with ids)",
        InspectionResult,
        errors=(400, 404),
    ),
    Route(
        "get",
        "/api/stats",
        "stats",
        "Counts in a time range: inspections, failures, incidents by class, operators' verdicts",
        Stats,
        errors=(400,),
        query=RANGE,
    ),
    Route(
        "get",
        "/api/quality",
        "quality",
        "Quality figures over a time range: defect rate, yield, Pareto, p-chart, verdicts",
        QualityReport,
        errors=(400, 404),
        query=(
            Param(
                "period",
                _TEXT,
                "The range in words: `this shift`, `last shift`, `today`, `yesterday`, "
                "`this week`, `since 6am`, `the last 2 hours`, or an ISO 8601 date and time "
                "(default: `quality.period`).",
            ),
            Param("station_id", _TEXT, "Only this station."),
        ),
        description="The figures every consumer shows (Home Assistant's sensors, MQTT's `kpi`), "
        "computed once, in the engine (`edge_inspector/quality.py`).",
    ),
    Route(
        "get",
        "/api/stats/series",
        "series",
        "Inspections, failures and incidents per time bucket",
        Series,
        errors=(400,),
        query=(
            *RANGE,
            Param(
                "bucket_s",
                {"type": "integer", "minimum": 10, "maximum": 86400, "default": 900},
                "Bucket length in seconds.",
            ),
        ),
    ),
    Route(
        "get",
        "/api/manuals/search",
        "manual_search",
        "Search the equipment manuals",
        ManualResults,
        errors=(400,),
        query=(
            Param("q", _TEXT, "What to look for.", required=True),
            Param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 20, "default": 3},
                "How many passages.",
            ),
        ),
    ),
    Route(
        "get",
        "/api/incidents",
        "incidents",
        "Incidents, newest first (paged)",
        IncidentPage,
        errors=(400,),
        query=PAGE,
    ),
    Route(
        "post",
        "/api/incidents",
        "missed_defect",
        "Report a defect a person found that the station passed",
        Reply(Incident, "Recorded (a confirmed, missed incident)", status=201),
        errors=(400, 404),
        body=MissedDefectBody,
    ),
    Route(
        "get",
        "/api/incidents/{incident_id}",
        "incident",
        "One incident, with the VLM's report and actions",
        Incident,
        errors=(400, 404),
    ),
    Route(
        "get",
        "/api/incidents/{incident_id}/images/{kind}",
        "incident_image",
        "An incident's annotated frame, crop or raw frame",
        JPEG,
        errors=(404,),
    ),
    Route(
        "post",
        "/api/incidents/{incident_id}/verdict",
        "verdict",
        "An operator's verdict (kept in the incident's audit trail)",
        Incident,
        errors=(400, 404),
        body=VerdictBody,
    ),
    Route(
        "post",
        "/api/incidents/{incident_id}/actions/{request_id}",
        "resolve_action",
        "Run or decline an action the VLM asked a person to confirm",
        ActionRecord,
        errors=(400, 409),
        body=ResolveBody,
    ),
    Route(
        "get",
        "/api/ws",
        "websocket",
        "Live events over a websocket",
        Reply(None, "Switching to the websocket protocol", status=101),
        errors=(400,),
        query=(
            Param("events", _TEXT, "Comma-separated types to receive (default: all)."),
            Param("since", _TIME, "Replay the incidents stored since then first."),
            Param(
                "actions",
                {"enum": ["0", "1"]},
                "1: this client carries out `service` actions (Home Assistant).",
            ),
        ),
        description=_WEBSOCKET,
        messages=(InspectionResult, Incident, StationState, OperatorAlert, QualityReport),
    ),
)
