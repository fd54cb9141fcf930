"""The public results of inspection: what leaves the engine for every subscriber.

These models are the payloads of the event sinks (Home Assistant, MQTT, the HTTP API). Their
JSON Schema is exported by `export_schemas()` and committed under `edge_inspector/schema/`,
so subscribers can validate what they receive.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .redact import redact

__all__ = [
    "ActionRecord",
    "ActionStatus",
    "BoundingBox",
    "Classification",
    "Detection",
    "Incident",
    "IncidentReport",
    "IncidentState",
    "InspectionResult",
    "Latency",
    "ManualReference",
    "ModelInfo",
    "OperatorAlert",
    "PChart",
    "QualityReport",
    "Severity",
    "StationQuality",
    "StationState",
    "Verdict",
    "VlmResult",
    "VlmStatus",
    "VlmVerdict",
    "export_schemas",
]

SCHEMA_VERSION = 1


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BoundingBox(_Event):
    """A box in frame pixels, top-left (x1, y1) to bottom-right (x2, y2)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2)


class Detection(_Event):
    """One object the model found, and whether the station's rules count it as a defect."""

    class_name: str
    class_id: int
    confidence: Annotated[float, Field(ge=0, le=1)]
    box: BoundingBox
    track_id: int | None = None
    defect: bool = Field(description="It passed the defect rules: class, threshold, zones, area.")


class Verdict(StrEnum):
    """The outcome of one inspection."""

    PASS = "pass"
    FAIL = "fail"


class Latency(_Event):
    """Where the time of one inspection went, in milliseconds."""

    queue_ms: float = Field(description="From the frame's capture to the start of inference.")
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    rules_ms: float = Field(description="Zones, thresholds, tracking and debounce.")
    total_ms: float = Field(description="From the frame's capture to the result.")
    batch_size: int = 1


class ModelInfo(_Event):
    """Which model made a result: its file name and the SHA-256 of its content (the model as
    configured, before any export), and the runtime that ran it."""

    name: str
    sha256: str
    runtime: str | None = Field(
        default=None,
        description="pytorch, onnx, openvino, tensorrt, torchscript or other: what ran the "
        "model (`runtime: auto` may run an export of the configured file).",
    )


class InspectionResult(_Event):
    """The result of inspecting one frame."""

    schema_version: int = SCHEMA_VERSION
    inspection_id: str
    station_id: str
    timestamp: datetime
    frame_seq: int
    part_id: str | None = None
    lot_id: str | None = None
    verdict: Verdict
    detections: tuple[Detection, ...]
    new_incident_ids: tuple[str, ...] = Field(
        default=(), description="Incidents this inspection confirmed (after debounce/tracking)."
    )
    image_width: int
    image_height: int
    image_path: str | None = None
    model: ModelInfo
    latency: Latency

    @property
    def defects(self) -> tuple[Detection, ...]:
        return tuple(d for d in self.detections if d.defect)


class IncidentState(StrEnum):
    """Where an incident is in its life."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"


class Severity(StrEnum):
    """How bad a defect is, as the VLM (or the operator) judges it."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class VlmStatus(StrEnum):
    """Where an incident's enrichment by the vision-language model stands."""

    PENDING = "pending"  # queued, not answered yet
    UNAVAILABLE = "unavailable"  # Ollama is down or slow; retried when it is back
    DONE = "done"
    INVALID = "invalid"  # the model's answer did not fit the schema, twice; raw text kept
    FAILED = "failed"  # the model answered but the run failed (deadline, loop); not retried
    SKIPPED = "skipped"  # waited longer than `vlm.max_age`: never sent; `error` says why


class VlmVerdict(StrEnum):
    """The model's second opinion on the detector's call (the incident's `defect_class`).

    A disputed incident is not closed by it: its state stays for a person to decide, and the
    quality figures still count the detector's call (false rejects come from operators'
    verdicts only)."""

    CONFIRMED = "confirmed"  # the model sees the same defect class
    DISPUTED = "disputed"  # the model sees no defect (`no_defect`)
    RECLASSIFIED = "reclassified"  # another defect class, or `other`
    UNCONFIRMED = "unconfirmed"  # held back for the model, released before it spoke


class Classification(_Event):
    """The VLM's reading of the defect."""

    defect_type: str
    severity: Severity
    confidence: Annotated[float, Field(ge=0, le=1)]
    description: Annotated[str, Field(max_length=500)]


class ManualReference(_Event):
    """A passage of an equipment manual the fix came from."""

    file: str
    section: str
    page: int | None = None
    excerpt: str
    score: float


class IncidentReport(_Event):
    """The incident report: what happened, why, and how to fix it."""

    summary: str
    probable_cause: str
    fix_steps: tuple[str, ...]
    manual_refs: tuple[ManualReference, ...] = ()
    manual_section: str | None = Field(
        default=None, description="The manual section the model says the fix comes from."
    )
    written_by: str = Field(
        default="model", description="`model`, or `engine` when the model wrote none."
    )


class ActionStatus(StrEnum):
    """What became of one tool call."""

    EXECUTED = "executed"
    FAILED = "failed"  # allowed, but the target failed (broker down, webhook error)
    REFUSED = "refused"  # not offered, or arguments against the schema: never executed
    RATE_LIMITED = "rate_limited"
    AWAITING_CONFIRMATION = "awaiting_confirmation"  # `confirm: true`: a human decides
    APPROVED = "approved"  # a human approved; then executed or failed
    DECLINED = "declined"  # a human declined


class ActionRecord(_Event):
    """One tool call of the model (or of the engine's fallback), and its outcome."""

    tool: str
    arguments: dict[str, Any]
    status: ActionStatus
    detail: str = ""
    at: datetime
    request_id: str | None = Field(
        default=None, description="Set when the action waits for a human's confirmation."
    )
    by: str = Field(default="model", description="`model`, `engine`, or the human who decided.")


class VlmResult(_Event):
    """The VLM's enrichment of an incident."""

    status: VlmStatus
    model: str | None = None
    prompt_version: str
    mode: str | None = Field(default=None, description="`tools`, or `json` for models without.")
    classification: Classification | None = None
    verdict: VlmVerdict | None = Field(
        default=None,
        description="The model's verdict on the detector's call: `confirmed` (same class), "
        "`disputed` (no defect), `reclassified` (another class or `other`), or `unconfirmed` "
        "(a station that holds defects back for the model released it before the model "
        "answered). None: not answered yet. A later answer replaces `unconfirmed`.",
    )
    report: IncidentReport | None = None
    actions: tuple[ActionRecord, ...] = ()
    coalesced_with: str | None = Field(
        default=None,
        description="A repeat of the same defect answered by another incident's enrichment: "
        "that incident's id (its classification and report are copied; its actions are not "
        "repeated).",
    )
    raw: str | None = Field(default=None, description="The model's last answer when invalid.")
    error: str | None = None
    attempts: int = 0
    rounds: int = 0
    duration_ms: float | None = None
    evidence: str | None = Field(
        default=None,
        description="What the model judged from: `images` (the crop and the frame), or `text` "
        "(the detector's findings alone: the model cannot see, or no picture was kept).",
    )
    tool_calls: int = Field(default=0, description="Tool calls the model made.")
    invalid_tool_calls: int = Field(
        default=0,
        description="Of those, the ones refused as written wrong: malformed, a tool not offered, "
        "arguments against its schema.",
    )
    updated_at: datetime


class OperatorAlert(_Event):
    """A message for the operator: from `alert_operator`, or a request to confirm an action."""

    alert_id: str
    kind: str = Field(description="`alert`, or `confirm_request` for an action a human decides.")
    station_id: str
    incident_id: str
    message: str
    severity: Severity
    action: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class Incident(_Event):
    """A confirmed defect: one per tracked defect, however many frames it was seen on."""

    schema_version: int = SCHEMA_VERSION
    incident_id: str
    station_id: str
    station_name: str
    created_at: datetime
    inspection_id: str
    part_id: str | None = None
    lot_id: str | None = None
    defect_class: str
    confidence: Annotated[float, Field(ge=0, le=1)]
    boxes: tuple[BoundingBox, ...]
    detections: tuple[Detection, ...]
    track_id: int | None = None
    # Paths relative to the store's image folder (served by the API's incident image route).
    frame_path: str | None = Field(
        default=None, description="Annotated frame (JPEG), relative to the store's images."
    )
    crop_path: str | None = Field(
        default=None, description="Crop around the defect (JPEG), relative to the store's images."
    )
    raw_path: str | None = Field(
        default=None,
        description="The frame as the camera gave it (JPEG, for datasets), relative to the "
        "store's images.",
    )
    state: IncidentState = IncidentState.OPEN
    model: ModelInfo
    latency_ms: float = Field(description="From the frame's capture to the incident.")
    vlm: VlmResult | None = Field(
        default=None, description="The VLM's classification, report and actions (None: VLM off)."
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Free-form additions.")

    def image_path(self, kind: str) -> str | None:
        """Where its `frame`, `crop` or `raw` picture is stored (None: not kept); KeyError for
        another kind."""
        return {"frame": self.frame_path, "crop": self.crop_path, "raw": self.raw_path}[kind]


class StationState(_Event):
    """A station's live state: what dashboards and availability follow."""

    station_id: str
    name: str
    enabled: bool
    available: bool
    mode: str
    # whatever made the text (a library's error quoting the camera URL), no credential in it
    error: Annotated[str | None, AfterValidator(lambda v: None if v is None else redact(v))] = None
    frames: int = 0
    inspections: int = 0
    defects: int = Field(default=0, description="Inspections with at least one defect.")
    incidents: int = 0
    frame_errors: int = 0
    last_defect_class: str | None = None
    last_incident_id: str | None = None
    last_latency_ms: float | None = None
    defect_present: bool = Field(default=False, description="The last inspection failed.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Confidence each defect class needs, as now set."
    )
    line: str | None = Field(default=None, description="The production line.")
    product: str | None = None
    model: str | None = Field(default=None, description="The model file's name.")
    runtime: str | None = Field(
        default=None,
        description="What runs the model (pytorch, onnx, openvino, ...); with `runtime: auto`, "
        "the fastest on this machine.",
    )
    push: bool = Field(default=False, description="Inspects pictures sent to it (POST .../frames).")
    started: bool = Field(
        default=True,
        description="False: the station could not start (its model or classes); `error` says why.",
    )
    plc: Literal["connected", "unavailable"] | None = Field(
        default=None, description="The link to the line's PLC (None: the station has none)."
    )
    plc_error: Annotated[str | None, AfterValidator(lambda v: None if v is None else redact(v))] = (
        Field(default=None, description="Why the PLC link is unavailable.")
    )
    vlm_queue: int | None = Field(
        default=None,
        description="This station's incidents waiting for the VLM, queued or being answered "
        "(None: VLM off).",
    )
    vlm_oldest_pending_s: float | None = Field(
        default=None,
        description="Seconds the oldest of this station's incidents not yet answered by the "
        "VLM has waited (None: none waiting, or VLM off).",
    )
    updated_at: datetime


class PChart(_Event):
    """A p-chart of the defect rate: the last hour's rate (the subgroup, `n` inspections)
    against 3-sigma limits around the rate of the 7 days before (the centre line `p_bar`)."""

    p_bar: float
    ucl: float = Field(description="Upper control limit.")
    lcl: float = Field(description="Lower control limit.")
    rate: float = Field(description="The subgroup's defect rate (a fraction).")
    n: int = Field(description="Inspections in the subgroup.")
    out_of_control: bool = Field(description="The rate is above the upper control limit.")


class StationQuality(_Event):
    """The quality figures of one station (or of all, `station_id` None) over a time range.

    Rates are percentages with two decimals, None when their denominator is zero:
    defect rate = failed / inspections; yield = 100 - defect rate (first-pass yield);
    false-reject rate = rejected / (confirmed + rejected) of the incidents operators judged;
    false-accept rate = missed / (confirmed + missed), `missed` being defects people found on
    parts a station passed."""

    station_id: str | None = Field(description="None: every station together.")
    name: str
    inspections: int
    failed: int = Field(description="Inspections with at least one defect.")
    incidents: int = Field(description="Incidents (one per tracked defect) in the range.")
    by_class: dict[str, int] = Field(
        description="Incidents per defect class, most frequent first (a Pareto view)."
    )
    confirmed: int = Field(description="Incidents operators confirmed.")
    rejected: int = Field(description="Incidents operators rejected (false alarms).")
    missed: int = Field(description="Defects people found that a station passed.")
    defect_rate_percent: float | None
    yield_percent: float | None
    false_reject_rate_percent: float | None
    false_accept_rate_percent: float | None
    p_chart: PChart | None = Field(
        default=None, description="None: too few inspections for a verdict."
    )


class QualityReport(_Event):
    """Every station's quality figures over one time range: what `GET /api/quality` answers,
    what MQTT keeps retained for the current shift and publishes when a shift ends."""

    schema_version: int = SCHEMA_VERSION
    period: str = Field(description="The range as said: `this shift`, `today`, `since 06:00`.")
    since: datetime
    until: datetime = Field(description="The end of the range, or when it was computed.")
    complete: bool = Field(description="The range has ended (a past shift, yesterday).")
    stations: tuple[StationQuality, ...]
    total: StationQuality
    computed_at: datetime


_SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "inspection": InspectionResult,
    "incident": Incident,
    "station_state": StationState,
    "alert": OperatorAlert,
    "quality": QualityReport,
}


def export_schemas(folder: Path) -> list[Path]:
    """Write the JSON Schema of every public event model into `folder`; return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in _SCHEMA_MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://edge-inspector.local/schema/{name}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        path = folder / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
