"""The configuration: pydantic models of one YAML file, and errors a person can act on.

Coordinates (region of interest, masks) are fractions of the frame's width and height, so a
configuration stays right when a camera's resolution changes. Relative paths are relative to the
configuration file's folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .plc.config import PlcConfig
from .tools.schema import SchemaError, check_schema

__all__ = [
    "ActionConfig",
    "AutoActionConfig",
    "BreakerConfig",
    "DebounceConfig",
    "DefectClassConfig",
    "DetectionConfig",
    "EngineConfig",
    "FilesSourceConfig",
    "FolderSourceConfig",
    "HttpSnapshotSourceConfig",
    "ImagesConfig",
    "ManualsConfig",
    "MjpegSourceConfig",
    "ModelConfig",
    "MqttActionTarget",
    "MqttConfig",
    "PushSourceConfig",
    "RateLimitConfig",
    "RetentionConfig",
    "RtspSourceConfig",
    "ServiceActionTarget",
    "SourceConfig",
    "StationConfig",
    "StoreConfig",
    "SyntheticSourceConfig",
    "TrackingConfig",
    "VlmConfig",
    "VlmHoldConfig",
    "WebhookActionTarget",
    "load_config",
    "parse_config",
]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = info.context.get("base_dir") if isinstance(info.context, Mapping) else None
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


type ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
type Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# A defect class's confidence threshold, wherever it is set (file, HTTP, MQTT, Home Assistant):
# below 0.01 a detector reports noise on every frame, hundreds of boxes each.
MIN_THRESHOLD = 0.01
type Threshold = Annotated[float, Field(ge=MIN_THRESHOLD, le=1.0)]
type Point = tuple[Fraction, Fraction]
type Polygon = Annotated[tuple[Point, ...], Field(min_length=3)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FolderSourceConfig(_Model):
    """Every image in a folder, in name order: batch inspection and replay."""

    type: Literal["folder"]
    path: ConfigPath
    pattern: str = "*"
    recursive: bool = False
    loop: bool = False


class FilesSourceConfig(_Model):
    """A fixed list of image files, in the order given."""

    type: Literal["files"]
    paths: Annotated[tuple[ConfigPath, ...], Field(min_length=1)]
    loop: bool = False


class _HttpAuth(_Model):
    username: str | None = None
    password: str | None = None
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    verify_tls: bool = True


class HttpSnapshotSourceConfig(_HttpAuth):
    """A camera's still-image URL, fetched once per inspection."""

    type: Literal["http_snapshot"]
    url: Annotated[str, Field(pattern=r"^https?://")]


class MjpegSourceConfig(_HttpAuth):
    """A multipart MJPEG stream; the station always gets the newest frame."""

    type: Literal["mjpeg"]
    url: Annotated[str, Field(pattern=r"^https?://")]


class RtspSourceConfig(_Model):
    """An RTSP stream or a recorded video decoded with PyAV (or OpenCV)."""

    type: Literal["rtsp", "video"]
    url: str
    transport: Literal["tcp", "udp"] = "tcp"
    backend: Literal["pyav", "opencv"] = "pyav"
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    realtime: bool | None = Field(
        default=None,
        description="Pace a recorded file at its own frame rate and drop what the detector "
        "cannot keep up with (default: on for rtsp, off for video files).",
    )
    loop: bool = False


class PushSourceConfig(_Model):
    """Frames handed in by another part of the system (the Home Assistant adapter, the API)."""

    type: Literal["push"]


class SyntheticSourceConfig(_Model):
    """The demo's generated conveyor camera."""

    type: Literal["synthetic"]
    seed: int = 0
    width: Annotated[int, Field(ge=320, le=4096)] = 640
    height: Annotated[int, Field(ge=240, le=4096)] = 480
    defect_rate: Fraction = 0.35
    speed: Annotated[int, Field(ge=1, le=200)] = 16


type SourceConfig = Annotated[
    FolderSourceConfig
    | FilesSourceConfig
    | HttpSnapshotSourceConfig
    | MjpegSourceConfig
    | RtspSourceConfig
    | PushSourceConfig
    | SyntheticSourceConfig,
    Field(discriminator="type"),
]


def _exported_for(path: Path) -> str | None:
    """The runtime an exported model is for; None for a PyTorch model (.pt, .yaml), which can
    be exported to any."""
    name = path.name.lower()
    if name.endswith("_openvino_model") or path.suffix.lower() == ".xml":
        return "openvino"
    suffix = path.suffix.lower()
    if suffix in {".pt", ".yaml", ".yml"}:
        return None
    return {".onnx": "onnx", ".engine": "tensorrt", ".torchscript": "torchscript"}.get(
        suffix, suffix.lstrip(".") or "another runtime"
    )


class ModelConfig(_Model):
    """A detection model in any format Ultralytics loads (.pt, ONNX, OpenVINO folder, TensorRT)."""

    path: ConfigPath
    imgsz: Annotated[int, Field(ge=32, le=4096)] = 640
    device: str = "cpu"
    half: bool = False
    runtime: Literal["auto", "pytorch", "onnx", "openvino"] = Field(
        default="auto",
        description="What runs the model. `auto`: a PyTorch model (.pt) is exported to every "
        "runtime installed (cached by the model's hash), each is timed on a few frames, and the "
        "fastest runs; batches of frames are used only where they pay. An exported model runs as "
        "it is, batched only where that pays. A named runtime is always used: a .pt is exported "
        "to it (cached); an exported model must be for it. Nothing is timed then, and "
        "`detection.max_batch` applies as set.",
    )

    @model_validator(mode="after")
    def _runtime_fits_the_file(self) -> Self:
        exported = _exported_for(self.path)
        if self.runtime == "auto" or exported is None or exported == self.runtime:
            return self
        raise ValueError(
            f"runtime {self.runtime} cannot run {self.path.name}, a model exported for "
            f"{exported}: give the .pt model to have it exported for {self.runtime}, or leave "
            "runtime out (auto) to run this file as it is"
        )


class DefectClassConfig(_Model):
    """A class that counts as a defect, and the confidence it needs to count."""

    confidence: Threshold = 0.5


class DebounceConfig(_Model):
    """A defect is confirmed once it is seen in `n` of the last `m` frames."""

    n: Annotated[int, Field(ge=1, le=1000)] = 2
    m: Annotated[int, Field(ge=1, le=1000)] = 3

    @model_validator(mode="after")
    def _n_within_m(self) -> Self:
        if self.n > self.m:
            raise ValueError(f"n ({self.n}) must not be greater than m ({self.m})")
        return self


class TrackingConfig(_Model):
    """Follow each defect across frames so one scratch seen on 30 frames is one incident."""

    enabled: bool = True
    tracker: Literal["iou", "bytetrack", "botsort"] = Field(
        default="iou",
        description="`iou`: constant-velocity prediction and greedy IoU matching, made for a "
        "line's few defects moving one way (tens of microseconds a frame); `bytetrack` and "
        "`botsort`: Ultralytics' trackers (0.2 to 0.6 ms of Python a frame on a 2-core CPU).",
    )
    lost_frames: Annotated[int, Field(ge=1, le=10000)] = 30
    box_scale: Annotated[float, Field(ge=1.0, le=10.0)] = Field(
        default=2.5,
        description="Boxes are enlarged by this factor around their centre for matching from "
        "frame to frame, so a small defect moving about its own size per frame keeps its track.",
    )


class ImagesConfig(_Model):
    """Which images a station keeps (annotated frame and defect crops) and where."""

    save: Literal["defects", "all", "none"] = "defects"
    dir: ConfigPath | None = None
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 85


class VlmHoldConfig(_Model):
    """Hold a station's defect events back until the VLM has given its verdict on them, for
    lines where a false stop costs more than a late one. The incident is stored and sent to
    the VLM at once; its announcements (the MQTT `defect` message, Home Assistant's defect
    event, trigger and notification, the websocket) wait for the model's answer, or at most
    `max_wait` seconds, then go out as `unconfirmed`. The inspection's own verdict (the PLC's
    result, the `defect` sensor) is the detector's and is never held."""

    enabled: bool = False
    max_wait: Annotated[float, Field(ge=1, le=600)] = Field(
        default=30.0,
        description="Seconds a defect waits for the model's verdict before it goes out as "
        "`unconfirmed`.",
    )


class StationConfig(_Model):
    """One inspection station: a camera, a model, and the rules that make a detection a defect."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,62}$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    source: SourceConfig
    model: ModelConfig
    defects: Annotated[dict[str, DefectClassConfig], Field(min_length=1)]
    mode: Literal["continuous", "triggered"] = "continuous"
    fps: Annotated[float, Field(gt=0, le=240)] | None = 5.0
    roi: Polygon | None = None
    masks: tuple[Polygon, ...] = ()
    min_box_area: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    debounce: DebounceConfig = DebounceConfig()
    tracking: TrackingConfig = TrackingConfig()
    images: ImagesConfig = ImagesConfig()
    enabled: bool = True
    product: str | None = None
    line: str | None = None
    actions: tuple[str, ...] | None = Field(
        default=None,
        description="Names of `vlm.actions` the VLM may use at this station (default: all).",
    )
    plc: PlcConfig | None = Field(
        default=None,
        description="The line's PLC: triggers in, verdicts out (Modbus TCP or OPC UA).",
    )
    vlm_hold: VlmHoldConfig = Field(
        default_factory=VlmHoldConfig,
        description="Hold defect events back until the VLM's verdict (needs `vlm.host`).",
    )

    @model_validator(mode="after")
    def _plc_fits(self) -> Self:
        if self.plc is None:
            return self
        if self.plc.trigger is not None and self.mode != "triggered":
            raise ValueError(
                "plc.trigger needs mode: triggered (a PLC trigger starts each inspection)"
            )
        unknown = sorted(set(self.plc.codes or {}) - set(self.defects))
        if unknown:
            raise ValueError(f"plc.codes names classes that are not defects: {', '.join(unknown)}")
        return self

    @field_validator("defects", mode="before")
    @classmethod
    def _thresholds_as_numbers(cls, value: Any) -> Any:
        # `scratch: 0.4` is shorthand for `scratch: {confidence: 0.4}`.
        if isinstance(value, Mapping):
            return {
                k: {"confidence": v}
                if isinstance(v, int | float) and not isinstance(v, bool)
                else v
                for k, v in value.items()
            }
        return value

    @property
    def min_confidence(self) -> float:
        """The lowest threshold of any defect class: what the detector must at least report."""
        return min(d.confidence for d in self.defects.values())


class RetentionConfig(_Model):
    """How long history is kept and how much disk the images may take."""

    max_age_days: Annotated[float, Field(gt=0)] = 30.0
    max_images_mb: Annotated[float, Field(gt=0)] = 2048.0


class StoreConfig(_Model):
    """Where the SQLite history and the images live."""

    path: ConfigPath = Path("edge-inspector-data")
    retention: RetentionConfig = RetentionConfig()


class DetectionConfig(_Model):
    """How inference is shared between stations."""

    max_batch: Annotated[int, Field(ge=1, le=64)] = 8
    batch_window_ms: Annotated[float, Field(ge=0, le=1000)] = 10.0


def _default_node_id() -> str:
    import re
    import socket

    return re.sub(r"[^a-z0-9_]", "_", socket.gethostname().lower())[:40] or "engine"


class MqttConfig(_Model):
    """The MQTT broker, the topic tree, Home Assistant discovery and the outbox."""

    url: Annotated[str, Field(pattern=r"^(mqtts?|tcp|ssl)://")] | None = None
    base_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")] = (
        "edge_inspector"
    )
    discovery: bool = True
    discovery_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")] = "homeassistant"
    node_id: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")] = Field(
        default_factory=_default_node_id,
        description="This engine's id in unique ids and client id (default: the host name). "
        "Two engines on one broker need different ids and different base topics.",
    )
    ca_file: ConfigPath | None = None
    tls_insecure: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    publish_inspections: bool = False
    inspections_per_second: Annotated[float, Field(gt=0, le=100)] = 1.0
    outbox_max_messages: Annotated[int, Field(ge=10)] = 100_000
    outbox_max_age_hours: Annotated[float, Field(gt=0)] = 168.0


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class HttpConfig(_Model):
    """The engine's HTTP API: REST, the websocket push channel, MJPEG streams, metrics."""

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="Bind address (default loopback only).")
    port: Annotated[int, Field(ge=0, le=65535)] = 8321
    token: str | None = Field(
        default=None,
        min_length=16,
        description="Bearer token clients must send; required when bound beyond loopback. "
        "Default: the EDGE_INSPECTOR_TOKEN environment variable.",
    )
    mjpeg_fps: Annotated[float, Field(gt=0, le=30)] = 5.0
    max_upload_mb: Annotated[float, Field(gt=0, le=100)] = 20.0

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Self:
        if self.enabled and self.host not in _LOOPBACK and not self.effective_token:
            raise ValueError(
                f"http.host {self.host} is reachable from other machines: set http.token (at "
                "least 16 characters) or EDGE_INSPECTOR_TOKEN"
            )
        return self

    @property
    def effective_token(self) -> str | None:
        import os

        return self.token or os.environ.get("EDGE_INSPECTOR_TOKEN") or None


# -- the VLM agent, its tools and the equipment manuals ----------------------------------------

type ToolName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
type Severity = Literal["low", "medium", "high", "critical"]

BUILTIN_TOOLS = frozenset({"search_manual", "write_incident_report", "alert_operator"})


class MqttActionTarget(_Model):
    """Publish the tool call's arguments as JSON to an MQTT topic (standalone engine)."""

    type: Literal["mqtt"]
    topic: Annotated[str, Field(pattern=r"^[^#+\x00]+$", min_length=1, max_length=512)]
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


class WebhookActionTarget(_Model):
    """POST the tool call's arguments as JSON to a URL (a PLC gateway, Node-RED, a script)."""

    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0


class ServiceActionTarget(_Model):
    """A Home Assistant service (`domain.service`) with fixed data; run by the HA adapter."""

    type: Literal["service"]
    service: Annotated[str, Field(pattern=r"^[a-z0-9_]+\.[a-z0-9_]+$")]
    data: dict[str, Any] = Field(default_factory=dict)
    pass_arguments: bool = Field(
        default=False,
        description="Add the model's (schema-checked) arguments to the service data, for a "
        "script with fields. The fixed data always wins.",
    )


class ModbusActionTarget(_Model):
    """Write a fixed value to a coil or holding register of a PLC on Modbus TCP (stop the
    line, a stack light). The value is the configuration's: the model only decides to call."""

    type: Literal["modbus"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    device_id: Annotated[int, Field(ge=0, le=255)] = 1
    coil: Annotated[int, Field(ge=0, le=65535)] | None = None
    # `register` in the file (pydantic's models have a `register` attribute already)
    holding: Annotated[int, Field(ge=0, le=65535)] | None = Field(default=None, alias="register")
    value: Annotated[int, Field(ge=0, le=65535)] | bool
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.coil is None) == (self.holding is None):
            raise ValueError("give either coil or register")
        return self


class OpcuaActionTarget(_Model):
    """Write a fixed value to a node of a PLC's OPC UA server (with the node's data type)."""

    type: Literal["opcua"]
    url: Annotated[str, Field(pattern=r"^opc\.tcp://")]
    node: Annotated[str, Field(min_length=3, max_length=200, pattern=r"^(ns=\d+;)?[isgb]=.+")]
    namespace: str | None = None
    value: bool | int | float
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 4.0


type ActionTarget = Annotated[
    MqttActionTarget
    | WebhookActionTarget
    | ServiceActionTarget
    | ModbusActionTarget
    | OpcuaActionTarget,
    Field(discriminator="type"),
]


class RateLimitConfig(_Model):
    """At most `calls` executions in any `per_seconds` window."""

    calls: Annotated[int, Field(ge=1, le=10000)] = 1
    per_seconds: Annotated[float, Field(gt=0)] = 60.0


class ActionConfig(_Model):
    """A tool the VLM may call, mapped to an automation target, with its guard rails."""

    name: ToolName
    description: Annotated[str, Field(min_length=1, max_length=1000)]
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments (see edge_inspector.tools.schema).",
    )
    target: ActionTarget
    rate_limit: RateLimitConfig = RateLimitConfig()
    confirm: bool = Field(
        default=False, description="Ask a human instead of executing (a stop-the-line action)."
    )

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, name: str) -> str:
        if name in BUILTIN_TOOLS:
            raise ValueError(f"{name!r} is a built-in tool; choose another name")
        return name

    @field_validator("parameters")
    @classmethod
    def _schema_subset(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return check_schema(value)
        except SchemaError as exc:
            raise ValueError(str(exc)) from None


class AutoActionConfig(_Model):
    """For models without tool calls: run an action when a classified defect matches."""

    action: ToolName
    classes: tuple[str, ...] = Field(default=(), description="Defect types (empty: any).")
    min_severity: Severity = "high"
    arguments: dict[str, Any] = Field(default_factory=dict)


class BreakerConfig(_Model):
    """After `failures` failed calls in a row, leave Ollama alone for `cooldown` seconds."""

    failures: Annotated[int, Field(ge=1, le=100)] = 3
    cooldown: Annotated[float, Field(gt=0, le=3600)] = 30.0


class VlmConfig(_Model):
    """The vision-language model served by Ollama that enriches each incident."""

    host: Annotated[str, Field(pattern=r"^(https?://)?[^\s/]+(:\d+)?/?$")] | None = Field(
        default=None, description="Ollama's URL, e.g. http://127.0.0.1:11434 (unset: VLM off)."
    )
    model: Annotated[str, Field(min_length=1)] = "qwen2.5vl:7b"
    tool_mode: Literal["auto", "tools", "json"] = Field(
        default="auto", description="`auto` asks /api/show whether the model supports tools."
    )
    keep_alive: str | float = "30m"
    request_timeout: Annotated[float, Field(gt=0, le=600)] = 60.0
    deadline: Annotated[float, Field(gt=0, le=1800)] = 180.0
    max_tool_rounds: Annotated[int, Field(ge=1, le=20)] = 6
    concurrency: Annotated[int, Field(ge=1, le=16)] = 1
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 256
    backlog_policy: bool = Field(
        default=True,
        description="When the model falls behind: high-severity (`priority_confidence`), "
        "then triggered incidents first, a defect's first incident before repeats, newest "
        "first; repeats coalesced; `max_age` applied. False: first in, first out, every "
        "incident asked on its own.",
    )
    max_age: Annotated[float, Field(ge=0, le=7 * 86400)] | None = Field(
        default=600.0,
        description="Seconds an incident may wait for the model; older ones are marked "
        "`skipped` with the reason (0 or null: no limit). Needs `backlog_policy`.",
    )
    coalesce_window: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=60.0,
        description="An incident of the same class at the same station within this many "
        "seconds of one waiting or being answered shares its answer (the same track always).",
    )
    priority_confidence: Threshold = Field(
        default=0.8,
        description="Incidents the detector is at least this sure of go first, as high "
        "severity (the detector has no severity of its own).",
    )
    retry_interval: Annotated[float, Field(gt=0, le=3600)] = 30.0
    image_max_side: Annotated[int, Field(ge=64, le=4096)] = 768
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 80
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.1
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="More of Ollama's model options for every request (num_ctx, num_predict, "
        "top_p...); `temperature` is set above.",
    )
    breaker: BreakerConfig = BreakerConfig()
    actions: tuple[ActionConfig, ...] = ()
    auto_actions: tuple[AutoActionConfig, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.host is not None

    @model_validator(mode="after")
    def _names(self) -> Self:
        names = [a.name for a in self.actions]
        doubles = sorted({n for n in names if names.count(n) > 1})
        if doubles:
            raise ValueError(f"action names used more than once: {', '.join(doubles)}")
        for auto in self.auto_actions:
            if auto.action not in names:
                raise ValueError(f"auto_actions names {auto.action!r}, which is not in actions")
        return self

    def action(self, name: str) -> ActionConfig | None:
        return next((a for a in self.actions if a.name == name), None)


class ManualsConfig(_Model):
    """The equipment manuals the VLM searches (Markdown, text, PDF)."""

    dir: ConfigPath | None = None
    index: ConfigPath | None = Field(
        default=None, description="The SQLite index (default: manuals.sqlite3 in the store)."
    )
    embed_model: str | None = Field(
        default=None, description="An Ollama embedding model for hybrid ranking (optional)."
    )
    results: Annotated[int, Field(ge=1, le=20)] = 3


class OpcuaServerConfig(_Model):
    """The engine as an OPC UA server for SCADA: every station's state, KPIs and last verdict,
    read-only (`pip install "edge-inspector[plc]"`)."""

    endpoint: Annotated[str, Field(pattern=r"^opc\.tcp://[^/:]+:\d+")] = "opc.tcp://127.0.0.1:4840"
    namespace: Annotated[str, Field(min_length=1)] = "urn:edge-inspector"


def _shift_start(value: str) -> str:
    hour, sep, minute = value.partition(":")
    if not (sep and hour.isdigit() and minute.isdigit() and len(minute) == 2):
        raise ValueError("a shift starts at HH:MM")
    if int(hour) > 23 or int(minute) > 59:
        raise ValueError("not a time of day")
    return f"{int(hour):02d}:{minute}"


def _zone(value: str | None) -> str | None:
    if value is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone (like Europe/Berlin)") from None
    return value


class QualityConfig(_Model):
    """Shifts, and the quality figures (KPIs) the engine publishes."""

    shifts: Annotated[
        tuple[Annotated[str, AfterValidator(_shift_start)], ...],
        Field(min_length=1),
        AfterValidator(lambda starts: tuple(sorted(set(starts)))),  # each once, in order
    ] = Field(default=("06:00", "14:00", "22:00"), description="When each shift starts (HH:MM).")
    timezone: Annotated[str | None, AfterValidator(_zone)] = Field(
        default=None, description="The plant's time zone (default: this machine's)."
    )
    period: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        default="this shift",
        description="The range of the published KPIs (MQTT `kpi`, Home Assistant's sensors).",
    )
    refresh_s: Annotated[float, Field(ge=0.2, le=60)] = Field(
        default=5.0,
        description="How often the KPIs are recomputed while inspections come in (at least "
        "once a minute anyway, so that rolling ranges roll).",
    )

    @model_validator(mode="after")
    def _period_parses(self) -> Self:
        from datetime import UTC

        from .errors import InputError
        from .quality import Shifts

        try:  # whether it reads is the same in any zone: no need to look up this machine's
            Shifts([], UTC).period(self.period)
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return self


class EngineConfig(_Model):
    """The whole configuration file."""

    stations: tuple[StationConfig, ...]
    store: StoreConfig = StoreConfig()
    detection: DetectionConfig = DetectionConfig()
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = HttpConfig()
    vlm: VlmConfig = VlmConfig()
    manuals: ManualsConfig = ManualsConfig()
    opcua_server: OpcuaServerConfig | None = None
    quality: QualityConfig = QualityConfig()

    @model_validator(mode="after")
    def _station_actions(self) -> Self:
        names = {a.name for a in self.vlm.actions}
        for station in self.stations:
            unknown = sorted(set(station.actions or ()) - names)
            if unknown:
                raise ValueError(
                    f"station {station.id} names actions not in vlm.actions: {', '.join(unknown)}"
                )
        return self

    @model_validator(mode="after")
    def _holds_need_the_vlm(self) -> Self:
        held = [s.id for s in self.stations if s.vlm_hold.enabled]
        if held and not self.vlm.enabled:
            raise ValueError(
                f"station {', '.join(held)}: vlm_hold waits for the VLM's verdict, but the VLM "
                "is off (set vlm.host, or turn vlm_hold off)"
            )
        return self

    @property
    def manuals_index(self) -> Path:
        return self.manuals.index or self.store.path / "manuals.sqlite3"

    @field_validator("stations")
    @classmethod
    def _unique_ids(
        cls, stations: tuple[StationConfig, ...], info: ValidationInfo
    ) -> tuple[StationConfig, ...]:
        allow_none = isinstance(info.context, Mapping) and info.context.get("allow_no_stations")
        if not stations and not allow_none:
            raise ValueError("at least one station is needed")
        seen: set[str] = set()
        for station in stations:
            if station.id in seen:
                raise ValueError(f"station id {station.id!r} is used more than once")
            seen.add(station.id)
        return stations

    def station(self, station_id: str) -> StationConfig:
        """The station with this id."""
        for station in self.stations:
            if station.id == station_id:
                return station
        raise KeyError(station_id)


_TARGET_TAGS = {"mqtt", "webhook", "service"}
_SOURCE_TAGS = {"folder", "files", "http_snapshot", "mjpeg", "rtsp", "video", "push", "synthetic"}


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    previous: int | str | None = None
    for part in loc:
        tagged, previous = previous, part
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part in _SOURCE_TAGS and tagged == "source") or (
            part in _TARGET_TAGS and tagged == "target"
        ):
            continue  # pydantic puts the union's tag in the path; the user never wrote it
        elif part.startswith(("function-", "tagged-union")):
            continue
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line in the YAML file where the value at `loc` (or its nearest parent) is."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if found is None:
                continue
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            continue
        line = node.start_mark.line + 1
    return line


def _describe(error: Mapping[str, Any]) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling)"
    if error["type"] == "union_tag_invalid":
        expected = str(error.get("ctx", {}).get("expected_tags", "")).replace("'", "")
        return f"unknown type {error.get('ctx', {}).get('tag')!r}; expected one of {expected}"
    value = error.get("input")
    if isinstance(value, str | int | float | bool) or value is None:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{msg} (got {shown})"
    return msg


def parse_config(
    data: Any,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    yaml_root: yaml.Node | None = None,
) -> EngineConfig:
    """Validate already-parsed configuration data; errors name `source`, the key and the fix."""
    try:
        return EngineConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        locations = [tuple(e["loc"]) for e in errors]
        problems = []
        for error in errors:
            loc = tuple(error["loc"])
            if error["type"] == "too_short" and any(
                other[: len(loc)] == loc and other != loc for other in locations
            ):
                continue  # "no valid items left" only repeats the errors of its items
            line = _line_of(yaml_root, loc)
            where = f"{source}:{line}" if line is not None else source
            problems.append(f"{where}: {_key_path(loc)}: {_describe(error)}")
        raise ConfigError(
            f"{source}: {len(problems)} problem(s) in the configuration:\n  "
            + "\n  ".join(problems),
            problems=tuple(problems),
        ) from None


def load_config(path: Path | str) -> EngineConfig:
    """Read and validate a configuration file; raise `ConfigError` naming file, key and fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The context mark is where the broken construct starts, which is where to look;
        # the problem mark is where the parser gave up (often the end of the file).
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = ": ".join(p for p in parts if p) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping with a `stations` list at the top level, "
            f"got {type(data).__name__}"
        )
    return parse_config(data, source=str(path), base_dir=path.parent.resolve(), yaml_root=root)
