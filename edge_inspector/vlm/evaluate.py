"""`edge-inspector vlm eval`: the VLM stage run over labelled incident images, and scored.

The labelled set and its format: `edge_inspector.vlm.labelled_set`.

Each image goes through the engine's VLM stage: an `Incident` is made from the detector's call,
its crop and annotated frame are made and sent as the engine stores and the enricher sends them,
and `VlmAgent.run` classifies it and runs the tool loop, against any Ollama server and model.
Actions are a dry run: the `ActionGuard` decides as in the engine, but every target records
the call instead of carrying it out (no MQTT message, webhook, PLC write or service call), and
answers the model as a target that did it would; operator alerts go nowhere.

Figures (`score`):
- accuracy per true class (`none` for clean images): the model's `defect_type` equals the
  label (`no_defect` for `none`); an image without a classification counts as wrong (a run
  that failed after its classification, in the tool loop, keeps it);
- disputes: detector false alarms removed (label `none`, model `no_defect`) and true defects
  wrongly disputed (label a class, model `no_defect`);
- severity: right, and within one step, over the defects the model classified as a defect;
- valid JSON: the classification fit its schema on the first try, or at all (after the one
  retry), over the images the model answered;
- valid tool calls: calls in the tool loop with a name and an object of arguments, naming a
  tool that was offered, with arguments that fit its schema, over every call the model made.
  They are read from the model's turns, recorded at the Ollama client, and judged as the agent
  judges them (tool calls, or calls written as text): that gives each call's tool and reason,
  and counts the calls of a run that failed half-way too (`VlmResult.tool_calls` and
  `invalid_tool_calls` count the same for a finished run). A turn the agent reads as no call
  but holds objects keyed by offered tools' names (`{"write_incident_report": {...},
  {"alert_operator": {...}}`: broken JSON, as a 1.5B model writes it) counts as an invalid call
  of each: the model meant them, the agent did not see them (and does not count them);
- rounds of the tool loop, and seconds from the start of the run to its report (p50, p95).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..annotate import annotate, crop
from ..config import (
    ActionConfig,
    DefectClassConfig,
    EngineConfig,
    StationConfig,
    VlmConfig,
    load_config,
)
from ..demo import DEMO_CONFIG
from ..demo.runner import percentile
from ..errors import ConfigError
from ..events import (
    ActionStatus,
    BoundingBox,
    Classification,
    Detection,
    Incident,
    ModelInfo,
    Severity,
    VlmResult,
)
from ..frames import decode_image, encode_jpeg
from ..manuals import ManualIndex
from ..tools.actions import ActionContext, ActionGuard, ActionPort
from ..tools.schema import check_schema, validate_arguments
from . import prompts
from .agent import VlmAgent
from .client import (
    ChatTurn,
    ModelProfile,
    OllamaVlm,
    ToolCall,
    VlmUnavailableError,
    parse_text_tool_calls,
)
from .enricher import _prepare_image
from .labelled_set import (
    NONE,
    LabelledImage,
    LabelledSet,
    SkippedImage,
    StationContext,
    problem_of,
)

__all__ = [
    "DRY_RUN_ANSWER",
    "EvalReport",
    "ImageResult",
    "ToolCallCheck",
    "eval_config",
    "evaluate",
    "format_report",
    "score",
]

_LOGGER = logging.getLogger(__name__)
_ANSWER_LIMIT = 500
DRY_RUN_ANSWER = "carried out"  # what a dry-run target answers (the model reads it)
UNREAD = "written in a shape the agent does not read as a call"


# -- the station, the VLM settings, the manuals ----------------------------------------------


def eval_config(
    labelled: LabelledSet,
    config: EngineConfig | None,
    station_id: str | None = None,
    *,
    host: str | None = None,
    model: str | None = None,
    deadline: float | None = None,
    request_timeout: float | None = None,
) -> tuple[EngineConfig, StationConfig]:
    """The configuration and station to judge the set as.

    With a configuration: its station (`station_id`, else the set's station id when the
    configuration has it, else its only station), its VLM settings, actions and manuals.
    Without: the demo's configuration (the shipped set comes from its station), its station
    described as the set's `station` says."""
    if config is None:
        config = load_config(DEMO_CONFIG)
        station = config.stations[0]
        context = labelled.station or StationContext()
        station = station.model_copy(
            update={
                "id": context.id,
                "name": context.name,
                "product": context.product,
                "line": context.line,
                "defects": {c: DefectClassConfig() for c in labelled.classes()},
            }
        )
    else:
        station = _pick_station(labelled, config, station_id)
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("host", host),
            ("model", model),
            ("deadline", deadline),
            ("request_timeout", request_timeout),
        )
        if v is not None
    }
    try:
        # by alias: a modbus target's `holding` is written `register`
        vlm = VlmConfig.model_validate({**config.vlm.model_dump(by_alias=True), **changes})
    except ValidationError as exc:
        raise ConfigError(f"VLM settings: {problem_of(exc)}") from None
    return config.model_copy(update={"vlm": vlm, "stations": (station,)}), station


def _pick_station(
    labelled: LabelledSet, config: EngineConfig, station_id: str | None
) -> StationConfig:
    ids = [s.id for s in config.stations]
    wanted = station_id or (labelled.station.id if labelled.station else None)
    if wanted in ids:
        return config.station(str(wanted))
    if station_id is not None:
        raise ConfigError(
            f"no station {station_id!r} in the configuration (it has: {', '.join(ids)})"
        )
    if len(ids) == 1:
        return config.stations[0]
    raise ConfigError(
        f"the configuration has {len(ids)} stations ({', '.join(ids)}): pick one with --station"
    )


def _open_manuals(config: EngineConfig, workdir: Path) -> ManualIndex | None:
    """The manuals the agent searches: the configured folder indexed afresh (keyword ranking),
    or the configured index as it is."""
    if config.manuals.dir is not None:
        index = ManualIndex(workdir / "manuals.sqlite3")
        report = index.index(config.manuals.dir)
        for name, error in report.failed:
            _LOGGER.warning("manuals: %s skipped: %s", name, error)
        return index
    if config.manuals_index.exists():
        return ManualIndex(config.manuals_index)
    return None


# -- what the model did ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Exchange:
    """One chat turn: what was offered (tool name -> parameters), the format, the answer."""

    tools: dict[str, Mapping[str, Any]] | None
    format: Mapping[str, Any] | None
    turn: ChatTurn


class _RecordingVlm(OllamaVlm):
    """The Ollama client, keeping every turn so the model's tool calls can be judged."""

    def __init__(self, config: VlmConfig) -> None:
        super().__init__(config)
        self.exchanges: list[_Exchange] = []

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        format: Mapping[str, Any] | None = None,
    ) -> ChatTurn:
        turn = await super().chat(messages, tools=tools, format=format)
        offered = (
            {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
            if tools
            else None
        )
        self.exchanges.append(_Exchange(offered, format, turn))
        return turn


class _DryRunPort:
    """An action target that records the call and does nothing. What the model reads back is a
    plain success, as from a real target: told "dry run", a model changes what it does (a
    1.5B model called the action again with a `dry_run` argument)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str:
        self.calls.append((action.name, arguments))
        return DRY_RUN_ANSWER


@dataclass(frozen=True, slots=True)
class ToolCallCheck:
    """One tool call of the model and whether it was valid."""

    tool: str
    valid: bool
    reason: str | None = None
    as_text: bool = False  # written in the answer's text, not as a tool call

    def as_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "valid": self.valid,
            "reason": self.reason,
            "as_text": self.as_text,
        }


def _judge_calls(exchanges: Sequence[_Exchange]) -> list[ToolCallCheck]:
    """The tool loop's calls, judged as the agent judges them: a name, arguments that are an
    object (or a JSON string of one), a tool that was offered, arguments that fit its schema.
    (Tools offered with the classification are not for use there: that turn is not judged.)"""
    checks: list[ToolCallCheck] = []
    for exchange in exchanges:
        if exchange.tools is None or exchange.format is not None:
            continue
        turn = exchange.turn
        as_text = not turn.tool_calls
        calls = turn.tool_calls or parse_text_tool_calls(turn.content, list(exchange.tools))
        for call in calls:
            problem = _call_problem(call, exchange.tools)
            checks.append(ToolCallCheck(call.name, problem is None, problem, as_text))
        if not calls:
            checks += [
                ToolCallCheck(name, False, UNREAD, as_text=True)
                for name in _unread_calls(turn.content, exchange.tools)
            ]
    return checks


def _unread_calls(content: str, offered: Mapping[str, Any]) -> list[str]:
    """Tools the model meant to call in a shape the agent does not read as a call, taking it
    for a closing sentence: an object keyed by the tool's name, `"write_incident_report": {`,
    in JSON that is broken or has more after it."""
    return [
        name for name in offered for _ in re.finditer(rf'"{re.escape(name)}"\s*:\s*\{{', content)
    ]


def _call_problem(call: ToolCall, offered: Mapping[str, Mapping[str, Any]]) -> str | None:
    args = call.argument_object()
    if not call.name:
        return "no tool name"
    if args is None:
        return "arguments are not an object"
    if call.name not in offered:
        return "not offered"
    errors = validate_arguments(offered[call.name], args)
    return "bad arguments: " + "; ".join(errors) if errors else None


def _classifications(exchanges: Sequence[_Exchange]) -> list[Classification | None]:
    """Each classification attempt of the model: what it said when it fit the schema (checked
    as the agent checks it), None when it did not."""
    attempts: list[Classification | None] = []
    for exchange in exchanges:
        fmt = exchange.format
        if fmt is None or "defect_type" not in fmt.get("properties", {}):
            continue
        try:
            data = json.loads(exchange.turn.content)
            valid = not validate_arguments(check_schema(fmt), data)
            attempts.append(Classification.model_validate(data) if valid else None)
        except (ValueError, ValidationError):
            attempts.append(None)
    return attempts


@dataclass(frozen=True, slots=True)
class ImageResult:
    """What the VLM stage made of one labelled image."""

    label: LabelledImage
    result: VlmResult | None  # None: no result (the server failed, or the deadline passed)
    attempts: tuple[Classification | None, ...] = ()  # each classification answer, if valid
    tool_calls: tuple[ToolCallCheck, ...] = ()
    error: str | None = None
    last_answer: str | None = None  # the text of the model's last turn (what it ended with)

    @property
    def classification(self) -> Classification | None:
        return self.result.classification if self.result else None

    @property
    def predicted(self) -> str | None:
        """The model's class, `none` for no_defect; None without a classification."""
        c = self.classification
        if c is None:
            return None
        return NONE if c.defect_type == "no_defect" else c.defect_type

    @property
    def status(self) -> str:
        return str(self.result.status) if self.result else "no_answer"

    @property
    def seconds(self) -> float | None:
        if self.result is None or self.result.duration_ms is None:
            return None
        return self.result.duration_ms / 1000

    def as_json(self) -> dict[str, Any]:
        r = self.result
        c = self.classification
        return {
            "file": self.label.file,
            "label": {"defect": self.label.defect, "severity": self.label.severity},
            "detector": self.label.detector.model_dump(by_alias=True),
            "status": self.status,
            "mode": r.mode if r else None,
            "classification": c.model_dump(mode="json") if c else None,
            "correct": self.predicted == self.label.truth,
            "classification_attempts": [a is not None for a in self.attempts],
            "rounds": r.rounds if r else None,
            "seconds": self.seconds,
            "report_by": r.report.written_by if r and r.report else None,
            "report": r.report.summary if r and r.report else None,
            "tool_calls": [t.as_json() for t in self.tool_calls],
            # nothing was carried out: "executed" is what the engine would have done
            "actions": [
                {
                    "tool": a.tool,
                    "status": a.status,
                    "detail": a.detail,
                    "dry_run": a.status == ActionStatus.EXECUTED,
                }
                for a in (r.actions if r else ())
            ],
            "error": self.error or (r.error if r else None),
            "last_answer": self.last_answer,
        }


# -- the figures -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ratio:
    """`count` of `total`; its rate is None when there is nothing to count."""

    count: int
    total: int

    @property
    def rate(self) -> float | None:
        return round(self.count / self.total, 4) if self.total else None

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "total": self.total, "rate": self.rate}

    def __str__(self) -> str:
        if not self.total:
            return "n/a"
        return f"{self.count} of {self.total} ({100 * self.count / self.total:.0f}%)"


def _ratio(items: Sequence[bool]) -> Ratio:
    return Ratio(sum(items), len(items))


@dataclass(frozen=True, slots=True)
class Metrics:
    """The figures of a run (see the module's docstring)."""

    accuracy: dict[str, Ratio]  # per true class, `none` for clean images
    overall: Ratio
    confusion: dict[str, dict[str, int]]  # true class -> predicted (or `no_answer`) -> count
    false_alarms_removed: Ratio
    defects_disputed: Ratio
    severity: Ratio
    severity_within_one: Ratio
    json_first_try: Ratio
    json_at_all: Ratio
    tool_calls: Ratio
    tool_calls_as_text: int
    tool_calls_unread: int
    tool_calls_by_tool: dict[str, Ratio]
    rounds_mean: float | None
    rounds_max: int | None
    seconds_p50: float | None
    seconds_p95: float | None
    reports: int
    reports_by_model: int
    statuses: dict[str, int]
    detector_right: Ratio  # the detector's class on the true defects
    agreed_with_detector: Ratio  # the model kept the detector's class

    def as_json(self) -> dict[str, Any]:
        return {
            "accuracy": {k: v.as_json() for k, v in self.accuracy.items()},
            "overall_accuracy": self.overall.as_json(),
            "confusion": self.confusion,
            "false_alarms_removed": self.false_alarms_removed.as_json(),
            "true_defects_disputed": self.defects_disputed.as_json(),
            "severity": self.severity.as_json(),
            "severity_within_one": self.severity_within_one.as_json(),
            "valid_json_first_try": self.json_first_try.as_json(),
            "valid_json_at_all": self.json_at_all.as_json(),
            "valid_tool_calls": self.tool_calls.as_json(),
            "tool_calls_as_text": self.tool_calls_as_text,
            "tool_calls_unread": self.tool_calls_unread,
            "tool_calls_by_tool": {k: v.as_json() for k, v in self.tool_calls_by_tool.items()},
            "rounds": {"mean": self.rounds_mean, "max": self.rounds_max},
            "seconds_to_report": {"p50": self.seconds_p50, "p95": self.seconds_p95},
            "reports": {"total": self.reports, "by_model": self.reports_by_model},
            "status": self.statuses,
            "detector_class_right": self.detector_right.as_json(),
            "model_agreed_with_detector": self.agreed_with_detector.as_json(),
        }


def score(results: Sequence[ImageResult], classes: Sequence[str] = ()) -> Metrics:
    """The figures of a run (see the module's docstring)."""
    truths = [*dict.fromkeys([*classes, *(r.label.truth for r in results if r.label.defect)]), NONE]
    confusion: dict[str, Counter[str]] = {t: Counter() for t in truths}
    for r in results:
        confusion.setdefault(r.label.truth, Counter())[r.predicted or "no_answer"] += 1
    clean = [r for r in results if r.label.defect is None]
    defects = [r for r in results if r.label.defect is not None]
    severities: list[tuple[Severity, Severity]] = []
    for r in defects:
        c = r.classification
        if r.label.severity is not None and c is not None and r.predicted != NONE:
            severities.append((r.label.severity, c.severity))
    answered = [r for r in results if r.attempts]
    calls = [call for r in results for call in r.tool_calls]
    by_tool: dict[str, list[bool]] = {}
    for call in calls:
        by_tool.setdefault(call.tool, []).append(call.valid)
    done = [r.result for r in results if r.result is not None]
    seconds = [r.seconds for r in results if r.seconds is not None and r.result and r.result.report]
    classified = [r for r in results if r.predicted is not None]
    return Metrics(
        accuracy={
            t: _ratio([r.predicted == t for r in results if r.label.truth == t])
            for t in truths
            if any(r.label.truth == t for r in results)
        },
        overall=_ratio([r.predicted == r.label.truth for r in results]),
        confusion={t: dict(c) for t, c in confusion.items() if c},
        false_alarms_removed=_ratio([r.predicted == NONE for r in clean]),
        defects_disputed=_ratio([r.predicted == NONE for r in defects]),
        severity=_ratio([want == got for want, got in severities]),
        severity_within_one=_ratio([abs(want.rank - got.rank) <= 1 for want, got in severities]),
        json_first_try=_ratio([r.attempts[0] is not None for r in answered]),
        json_at_all=_ratio([any(a is not None for a in r.attempts) for r in answered]),
        tool_calls=_ratio([call.valid for call in calls]),
        tool_calls_as_text=sum(call.as_text for call in calls),
        tool_calls_unread=sum(call.reason == UNREAD for call in calls),
        tool_calls_by_tool={k: _ratio(v) for k, v in sorted(by_tool.items())},
        rounds_mean=round(sum(d.rounds for d in done) / len(done), 2) if done else None,
        rounds_max=max((d.rounds for d in done), default=None),
        seconds_p50=round(percentile(seconds, 50), 2) if seconds else None,
        seconds_p95=round(percentile(seconds, 95), 2) if seconds else None,
        reports=sum(d.report is not None for d in done),
        reports_by_model=sum(d.report is not None and d.report.written_by == "model" for d in done),
        statuses=dict(Counter(r.status for r in results)),
        detector_right=_ratio([r.label.detector.class_name == r.label.defect for r in defects]),
        agreed_with_detector=_ratio(
            [r.predicted == r.label.detector.class_name for r in classified]
        ),
    )


# -- the run ---------------------------------------------------------------------------------


@dataclass(slots=True)
class EvalReport:
    """A run: what was judged, how, the per-image results and the figures."""

    folder: Path
    host: str
    model: str
    station: StationConfig
    profile: ModelProfile
    results: list[ImageResult] = field(default_factory=list)
    skipped: tuple[SkippedImage, ...] = ()
    dry_run_calls: int = 0
    aborted: str | None = None  # why the run stopped early (the server went away)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def metrics(self) -> Metrics:
        return score(self.results, list(self.station.defects))

    def as_json(self) -> dict[str, Any]:
        return {
            "set": str(self.folder),
            "host": self.host,
            "model": self.model,
            "prompt_version": prompts.PROMPT_VERSION,
            "started_at": self.started_at.isoformat(),
            "station": {
                "id": self.station.id,
                "name": self.station.name,
                "defects": list(self.station.defects),
                "actions": None if self.station.actions is None else list(self.station.actions),
            },
            "model_capabilities": list(self.profile.capabilities or ()),
            "vision": self.profile.vision,
            "dry_run": True,
            "dry_run_action_calls": self.dry_run_calls,
            "images": len(self.results),
            "skipped": [{"file": s.file, "reason": s.reason} for s in self.skipped],
            "aborted": self.aborted,
            "metrics": self.metrics.as_json(),
            "results": [r.as_json() for r in self.results],
        }


def _incident(label: LabelledImage, station: StationConfig, source: str) -> Incident:
    call = label.detector
    box = BoundingBox(x1=call.box[0], y1=call.box[1], x2=call.box[2], y2=call.box[3])
    classes = list(station.defects)
    detection = Detection(
        class_name=call.class_name,
        class_id=classes.index(call.class_name) if call.class_name in classes else 0,
        confidence=call.confidence,
        box=box,
        defect=True,
    )
    ident = uuid.uuid4().hex
    return Incident(
        incident_id=ident,
        station_id=station.id,
        station_name=station.name,
        created_at=datetime.now(UTC),
        inspection_id=ident,
        defect_class=call.class_name,
        confidence=call.confidence,
        boxes=(box,),
        detections=(detection,),
        model=ModelInfo(name=source, sha256=hashlib.sha256(source.encode()).hexdigest()),
        latency_ms=0.0,
    )


def _evidence(
    path: Path, incident: Incident, station: StationConfig, vlm: VlmConfig, workdir: Path
) -> list[bytes]:
    """The crop and the annotated frame, stored as the station stores them and prepared as the
    enricher prepares them for the model."""
    image = decode_image(path.read_bytes(), origin=str(path))
    quality = station.images.jpeg_quality
    out: list[bytes] = []
    for kind, picture in (
        ("crop", crop(image, incident.boxes)),
        ("frame", annotate(image, incident.detections, confirmed=incident.detections)),
    ):
        stored = workdir / f"{kind}.jpg"
        stored.write_bytes(encode_jpeg(picture, quality))
        data = _prepare_image(str(stored), vlm.image_max_side, vlm.jpeg_quality)
        if data is not None:
            out.append(data)
    return out


async def evaluate(
    labelled: LabelledSet,
    config: EngineConfig,
    station: StationConfig,
    *,
    limit: int | None = None,
    progress: Callable[[int, int, ImageResult], None] | None = None,
) -> EvalReport:
    """Run every labelled image (the first `limit`) through the VLM stage and score it.

    Raises VlmUnavailableError when the server or the model is not there at the start; a
    server that goes away later ends the run early (`EvalReport.aborted`)."""
    labelled = labelled.for_station(station)
    images = labelled.images[:limit] if limit else labelled.images
    loop = asyncio.get_running_loop()
    vlm = await loop.run_in_executor(None, _RecordingVlm, config.vlm)  # loads CA certificates
    with tempfile.TemporaryDirectory(prefix="edge-inspector-eval-") as tmp:
        try:
            run = _Evaluation(labelled, config, station, vlm, Path(tmp))
            report = await run.start()
            for number, label in enumerate(images, start=1):
                one = await run.image(label)
                report.results.append(one)
                if progress is not None:
                    progress(number, len(images), one)
                if one.result is None and (gone := await _server_gone(vlm)) is not None:
                    report.aborted = gone
                    break
        finally:
            await vlm.close()
    report.dry_run_calls = len(run.port.calls)
    return report


class _Evaluation:
    """The parts of one run: the recording client, the dry-run targets, the manuals, and the
    model's profile (learnt once)."""

    def __init__(
        self,
        labelled: LabelledSet,
        config: EngineConfig,
        station: StationConfig,
        vlm: _RecordingVlm,
        workdir: Path,
    ) -> None:
        self.labelled = labelled
        self.config = config
        self.station = station
        self.vlm = vlm
        self.workdir = workdir
        self.port = _DryRunPort()
        self.targets: dict[str, ActionPort] = {a.target.type: self.port for a in config.vlm.actions}
        self.manuals: ManualIndex | None = None
        self.profile: ModelProfile | None = None

    def _agent(self) -> VlmAgent:
        # a fresh guard (and its rate limits) each time: each incident is judged alone
        agent = VlmAgent(
            self.vlm,
            self.config.vlm,
            ActionGuard(self.config.vlm, self.targets),
            manuals=self.manuals,
            manuals_config=self.config.manuals.model_copy(update={"embed_model": None}),
        )
        agent.profile = self.profile
        return agent

    async def start(self) -> EvalReport:
        """Index the manuals; check the server and the model, and load it."""
        self.manuals = await asyncio.get_running_loop().run_in_executor(
            None, _open_manuals, self.config, self.workdir
        )
        self.profile = await self._agent().prepare()
        return EvalReport(
            self.labelled.folder,
            self.vlm.host,
            self.vlm.model,
            self.station,
            self.profile,
            skipped=self.labelled.skipped,
        )

    async def image(self, label: LabelledImage) -> ImageResult:
        """One labelled image through the agent."""
        incident = _incident(label, self.station, self.labelled.labels_file.name)
        images = await asyncio.get_running_loop().run_in_executor(
            None,
            _evidence,
            self.labelled.folder / label.file,
            incident,
            self.station,
            self.config.vlm,
            self.workdir,
        )
        agent = self._agent()
        self.vlm.exchanges.clear()
        result: VlmResult | None = None
        error: str | None = None
        try:
            result = (await agent.run(incident, self.station, images)).result
        except VlmUnavailableError as exc:
            error = str(exc)
        self.profile = agent.profile or self.profile  # a model that refused tools stays in json
        exchanges = self.vlm.exchanges
        return ImageResult(
            label,
            result,
            attempts=tuple(_classifications(exchanges)),
            tool_calls=tuple(_judge_calls(exchanges)),
            error=error,
            last_answer=exchanges[-1].turn.content[:_ANSWER_LIMIT] if exchanges else None,
        )


async def _server_gone(vlm: OllamaVlm) -> str | None:
    """Why the server cannot serve at all now, or None (the failure was this image's)."""
    try:
        await vlm.check()
    except VlmUnavailableError as exc:
        return str(exc)
    return None


# -- the printed report ----------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def format_report(report: EvalReport) -> str:
    """The run as a readable table."""
    m = report.metrics
    station = report.station
    vision = (
        "sees the images"
        if report.profile.vision
        else "no vision: it judged from the detector's call only (no image sent)"
    )
    lines = [
        f"VLM evaluation of {report.model} at {report.host} (prompt {prompts.PROMPT_VERSION})",
        f"set:      {report.folder} ({len(report.results)} images run, "
        f"{len(report.skipped)} skipped)",
        f"station:  {station.id} ({station.name}; classes {', '.join(station.defects)})",
        f"model:    {', '.join(report.profile.capabilities or ('capabilities unknown',))}; "
        f"{vision}",
        f"actions:  DRY RUN, nothing was carried out ({report.dry_run_calls} call(s) reached a "
        "target and were only recorded)",
    ]
    if report.aborted:
        lines.append(f"STOPPED EARLY: {report.aborted}")
    lines += [
        "",
        f"{'file':<20} {'label':<14} {'detector':<14} {'model':<18} {'status':<9} "
        f"{'rounds':>6} {'s':>6}  tools ok",
    ]
    for r in report.results:
        label = r.label.truth + (f"/{r.label.severity}" if r.label.severity else "")
        c = r.classification
        said = f"{r.predicted}/{c.severity}" if c and r.predicted != NONE else (r.predicted or "-")
        mark = "" if r.predicted == r.label.truth else " x"
        valid = sum(t.valid for t in r.tool_calls)
        rounds = _num(r.result.rounds if r.result else None)
        seconds = _num(None if r.seconds is None else round(r.seconds, 1))
        lines.append(
            f"{r.label.file[:20]:<20} {label:<14} {r.label.detector.class_name:<14} "
            f"{(said + mark)[:18]:<18} {r.status:<9} "
            f"{rounds:>6} {seconds:>6}"
            f"  {valid}/{len(r.tool_calls)}"
        )
    lines += ["", f"{'class':<10} {'images':>6} {'correct':>7} {'accuracy':>8}"]
    for name, ratio in [*m.accuracy.items(), ("all", m.overall)]:
        rate = "n/a" if ratio.rate is None else f"{100 * ratio.rate:.0f}%"
        lines.append(f"{name:<10} {ratio.total:>6} {ratio.count:>7} {rate:>8}")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(m.statuses.items()))
    lines += [
        "",
        f"detector false alarms the model's disputes remove  {m.false_alarms_removed}",
        f"true defects the model wrongly disputes            {m.defects_disputed}",
        f"severity right (defects classified as defects)     {m.severity}; "
        f"within one step {m.severity_within_one}",
        f"valid JSON classification, first try              {m.json_first_try}",
        f"valid JSON classification, at all (1 retry)       {m.json_at_all}",
        f"valid tool calls                                   {m.tool_calls}"
        + (f"; {m.tool_calls_as_text} written as text" if m.tool_calls_as_text else "")
        + (f", {m.tool_calls_unread} of them unread by the agent" if m.tool_calls_unread else ""),
        f"rounds of the tool loop                            mean {_num(m.rounds_mean)}, "
        f"max {_num(m.rounds_max)}",
        f"seconds to a report                                p50 {_num(m.seconds_p50)}, "
        f"p95 {_num(m.seconds_p95)} ({m.reports} reports, {m.reports_by_model} written by "
        "the model)",
        f"status                                             {statuses}",
        f"the detector's class was right (true defects)      {m.detector_right}",
        f"the model kept the detector's class                {m.agreed_with_detector}",
    ]
    if m.tool_calls_by_tool:
        lines.append(
            "tool calls by tool                                 "
            + ", ".join(f"{k} {v.count}/{v.total}" for k, v in m.tool_calls_by_tool.items())
        )
    for s in report.skipped:
        lines.append(f"skipped {s.file}: {s.reason}")
    return "\n".join(lines)
