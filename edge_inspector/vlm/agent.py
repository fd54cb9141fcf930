"""The agent: classify with a JSON schema, then the tool loop (or the JSON-only flow).

Everything the model returns is untrusted. Classification and report are validated against
their schemas; tool calls go through the `ActionGuard`; built-in tools validate their own
arguments; the number of rounds and the total time are capped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..config import ManualsConfig, StationConfig, VlmConfig
from ..events import (
    ActionRecord,
    ActionStatus,
    Classification,
    Incident,
    IncidentReport,
    ManualReference,
    OperatorAlert,
    Severity,
    VlmResult,
    VlmStatus,
)
from ..manuals import ManualHit, ManualIndex
from ..tools.actions import ActionContext, ActionGuard
from ..tools.schema import check_schema, validate_arguments
from . import prompts
from .client import (
    ChatTurn,
    ModelProfile,
    OllamaVlm,
    ToolCall,
    ToolsUnsupportedError,
    VlmInvalidAnswerError,
    VlmUnavailableError,
    parse_text_tool_calls,
)
from .verdict import verdict_of

__all__ = ["AgentOutcome", "VlmAgent"]

_LOGGER = logging.getLogger(__name__)
_MAX_CALLS_PER_ROUND = 8
_MAX_ALERTS = 2
_RAW_LIMIT = 8000

BUILTIN_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "search_manual": (
        "Search the equipment manuals. Returns ranked passages with file, section and page.",
        check_schema(
            {
                "properties": {
                    "query": {"type": "string", "description": "What to look for", "maxLength": 300}
                },
                "required": ["query"],
            }
        ),
    ),
    "write_incident_report": (
        "Write the incident report. Call once, after searching the manual.",
        check_schema(
            {
                "properties": {
                    "summary": {"type": "string", "maxLength": 1000},
                    "probable_cause": {"type": "string", "maxLength": 1000},
                    "fix_steps": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 500},
                        "maxItems": 20,
                    },
                    "manual_section": {
                        "type": "string",
                        "description": "The manual section the fix comes from",
                        "maxLength": 300,
                    },
                },
                "required": ["summary", "probable_cause", "fix_steps"],
            }
        ),
    ),
    "alert_operator": (
        "Send a message to the line operator.",
        check_schema(
            {
                "properties": {
                    "message": {"type": "string", "maxLength": 500},
                    "severity": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
                },
                "required": ["message", "severity"],
            }
        ),
    ),
}


def tool_spec(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


@dataclass(slots=True)
class AgentOutcome:
    result: VlmResult
    alerts: list[OperatorAlert] = field(default_factory=list)


@dataclass(slots=True)
class _Run:
    incident: Incident
    station: StationConfig
    offered: list[str]
    classification: Classification | None = None
    report: IncidentReport | None = None
    refs: list[ManualReference] = field(default_factory=list)
    actions: list[ActionRecord] = field(default_factory=list)
    alerts: list[OperatorAlert] = field(default_factory=list)
    rounds: int = 0
    attempts: int = 0
    mode: str | None = None
    error: str | None = None
    capped: bool = False
    evidence: str = "text"
    tool_calls: int = 0
    bad_tool_calls: int = 0
    made: set[str] = field(default_factory=set)  # the tool calls made, as _call_key has them

    @property
    def context(self) -> ActionContext:
        return ActionContext(
            self.incident.station_id,
            self.incident.incident_id,
            self.incident.defect_class,
            str(self.classification.severity) if self.classification else None,
        )


class VlmAgent:
    """Turns one incident into a `VlmResult`. Raises VlmUnavailableError when Ollama cannot
    serve; the caller keeps the incident and retries later."""

    def __init__(
        self,
        vlm: OllamaVlm,
        config: VlmConfig,
        guard: ActionGuard,
        *,
        manuals: ManualIndex | None = None,
        manuals_config: ManualsConfig | None = None,
    ) -> None:
        self.vlm = vlm
        self.config = config
        self.guard = guard
        self.manuals = manuals
        self.manuals_config = manuals_config or ManualsConfig()
        self.profile: ModelProfile | None = None

    async def prepare(self) -> ModelProfile:
        """Check the server and model, learn its capabilities, load it (warm-up)."""
        profile = await self.vlm.check()
        if not profile.vision:
            _LOGGER.warning(
                "VLM %s cannot see images (%s): it will judge from the detector's findings only",
                profile.name,
                "as the server says"
                if profile.source == "server"
                else f"found by {profile.source}",
            )
        if self.config.tool_mode == "auto" and not profile.tools:
            _LOGGER.warning("VLM %s does not support tools: using the JSON-only flow", profile.name)
        await self.vlm.warm_up()
        self.profile = profile
        return profile

    def _mode(self) -> str:
        if self.config.tool_mode != "auto":
            return self.config.tool_mode
        return "tools" if self.profile is None or self.profile.tools else "json"

    async def run(
        self,
        incident: Incident,
        station: StationConfig,
        images: Sequence[bytes],
        *,
        on_classified: Callable[[VlmResult], Awaitable[None]] | None = None,
    ) -> AgentOutcome:
        """The whole run; `on_classified` hears the classification and the verdict as soon as
        they are known (still `pending`: the report and the actions follow), for a station
        that holds its defects back until the model has spoken."""
        if self.profile is None:
            await self.prepare()
        started = time.monotonic()
        run = _Run(incident, station, [a.name for a in self.guard.offered(station)])
        run.mode = self._mode()
        status = VlmStatus.DONE
        raw: str | None = None
        try:
            async with asyncio.timeout(self.config.deadline):
                try:
                    run.classification = await self._classify(run, images)
                except VlmInvalidAnswerError as exc:
                    status, raw, run.error = VlmStatus.INVALID, exc.raw[:_RAW_LIMIT], str(exc)
                if run.classification is not None:
                    if on_classified is not None:
                        await on_classified(self._early(run))
                    try:
                        await self._act(run, images)
                    except VlmUnavailableError as exc:
                        # after the classification and maybe actions: a retry would repeat
                        # them, so the run ends here with what it did (the engine's report)
                        status, run.error = VlmStatus.FAILED, f"the tool loop stopped: {exc}"
        except TimeoutError:
            if run.classification is None:
                raise VlmUnavailableError(
                    f"no classification within the {self.config.deadline:g} s deadline"
                ) from None
            status = VlmStatus.FAILED
            run.error = f"stopped at the {self.config.deadline:g} s deadline"
        if run.capped and status == VlmStatus.DONE:
            status = VlmStatus.FAILED
        if run.classification is not None and run.report is None:
            run.report = await self._engine_report(run)
        result = VlmResult(
            status=status,
            model=self.vlm.model,
            prompt_version=prompts.PROMPT_VERSION,
            mode=run.mode,
            classification=run.classification,
            verdict=verdict_of(incident.defect_class, run.classification),
            report=run.report,
            actions=tuple(run.actions),
            raw=raw,
            error=run.error,
            attempts=(incident.vlm.attempts if incident.vlm else 0) + 1,
            rounds=run.rounds,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            evidence=run.evidence,
            tool_calls=run.tool_calls,
            invalid_tool_calls=run.bad_tool_calls,
            updated_at=datetime.now(UTC),
        )
        return AgentOutcome(result, run.alerts)

    def _early(self, run: _Run) -> VlmResult:
        return VlmResult(
            status=VlmStatus.PENDING,
            model=self.vlm.model,
            prompt_version=prompts.PROMPT_VERSION,
            mode=run.mode,
            classification=run.classification,
            verdict=verdict_of(run.incident.defect_class, run.classification),
            evidence=run.evidence,
            attempts=(run.incident.vlm.attempts if run.incident.vlm else 0),
            updated_at=datetime.now(UTC),
        )

    # -- classification -------------------------------------------------------------------

    async def _classify(self, run: _Run, images: Sequence[bytes]) -> Classification:
        """The classification, under a JSON schema. With tools, the request offers the same
        tools as the loop that follows (not used here): the system prompt and the tool list
        then start every request of a station alike, and Ollama reads them once, not on
        every incident and every round."""
        with_images = bool(images) and self.profile is not None and self.profile.vision
        user: dict[str, Any] = {
            "role": "user",
            "content": prompts.classify_prompt(run.incident, with_images=with_images),
        }
        if with_images:
            user["images"] = [base64.b64encode(image).decode() for image in images]
            run.evidence = "images"
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": prompts.system_prompt(run.station)},
            user,
        ]
        schema = prompts.classification_schema(run.station)
        last_error = raw = ""
        for attempt in range(2):
            turn = await self._classify_turn(run, messages, schema)
            try:
                data = json.loads(turn.content)
                errors = validate_arguments(check_schema(schema), data)
                if errors:
                    raise ValueError("; ".join(errors))
                return Classification.model_validate(data)
            except (ValueError, ValidationError) as exc:
                last_error = str(exc).splitlines()[0][:300]
                _LOGGER.warning(
                    "incident %s: classification attempt %d invalid: %s",
                    run.incident.incident_id,
                    attempt + 1,
                    last_error,
                )
                messages += [
                    {"role": "assistant", "content": turn.content[:_RAW_LIMIT]},
                    {
                        "role": "user",
                        "content": f"That answer was not valid ({last_error}). Answer again "
                        "with one JSON object that fits the schema, nothing else.",
                    },
                ]
                raw = turn.content
        raise VlmInvalidAnswerError(
            f"the classification did not fit the schema twice: {last_error}", raw
        )

    async def _classify_turn(
        self, run: _Run, messages: list[dict[str, Any]], schema: dict[str, Any]
    ) -> ChatTurn:
        if run.mode != "tools":
            return await self.vlm.chat(messages, format=schema)
        try:
            return await self.vlm.chat(messages, format=schema, tools=self._tools(run))
        except ToolsUnsupportedError as exc:
            _LOGGER.warning("%s; using the JSON-only flow", exc)
            self.profile = ModelProfile(self.vlm.model, ("completion",), source="server")
            run.mode = "json"
            return await self.vlm.chat(messages, format=schema)

    # -- the tool loop --------------------------------------------------------------------

    async def _act(self, run: _Run, images: Sequence[bytes]) -> None:
        """The tool loop, or the JSON-only flow for a model without tools (or that refuses them)."""
        if run.mode == "tools":
            try:
                await self._tool_loop(run, images)
            except ToolsUnsupportedError as exc:
                _LOGGER.warning("%s; falling back to the JSON-only flow", exc)
                self.profile = ModelProfile(self.vlm.model, ("completion",))
                run.mode = "json"
        if run.mode == "json":
            await self._json_flow(run)

    def _tools(self, run: _Run) -> list[dict[str, Any]]:
        specs = [tool_spec(n, d, p) for n, (d, p) in BUILTIN_SPECS.items()]
        for action in self.guard.offered(run.station):
            specs.append(tool_spec(action.name, action.description, action.parameters))
        return specs

    async def _tool_loop(self, run: _Run, images: Sequence[bytes]) -> None:
        assert run.classification is not None
        tools = self._tools(run)
        names = {t["function"]["name"] for t in tools}
        c = run.classification
        hits = await self._search(f"{c.defect_type} {c.description}")
        self._keep_refs(run, hits)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": prompts.system_prompt(run.station)},
            {
                "role": "user",
                "content": prompts.classify_prompt(run.incident, with_images=False),
            },
            {"role": "assistant", "content": run.classification.model_dump_json()},
            {
                "role": "user",
                "content": prompts.agent_prompt(c.model_dump(mode="json"), _hits_text(hits)),
            },
        ]
        for _ in range(self.config.max_tool_rounds):
            run.rounds += 1
            turn = await self.vlm.chat(messages, tools=tools)
            calls = turn.tool_calls or parse_text_tool_calls(turn.content, names)
            echo: dict[str, Any] = {"role": "assistant", "content": turn.content}
            structured = [
                (c.name, args)
                for c in calls
                if c.name and (args := c.argument_object()) is not None
            ]
            if structured:
                echo["tool_calls"] = [
                    {"function": {"name": name, "arguments": args}} for name, args in structured
                ]
            messages.append(echo)
            fresh = [c for c in calls if _call_key(c) not in run.made]
            if not fresh:  # nothing, or only calls already made: the model is done
                return
            for call in calls[:_MAX_CALLS_PER_ROUND]:
                if _call_key(call) in run.made:  # never run twice (small models repeat)
                    answer = f"{call.name}: already done; do not call it again"
                else:
                    run.made.add(_call_key(call))
                    answer = await self._dispatch(run, call)
                messages.append({"role": "tool", "content": answer, "tool_name": call.name})
            for call in calls[_MAX_CALLS_PER_ROUND:]:
                messages.append(
                    {
                        "role": "tool",
                        "content": "error: too many calls in one turn; ignored",
                        "tool_name": call.name,
                    }
                )
        run.error = f"tool loop stopped after {self.config.max_tool_rounds} rounds"
        run.capped = True
        _LOGGER.warning("incident %s: %s", run.incident.incident_id, run.error)

    async def _dispatch(self, run: _Run, call: ToolCall) -> str:
        """Run one tool call; the text returned is what the model reads. A call the model
        wrote wrong (no name, arguments that are not an object, a tool not offered, arguments
        against the schema) is refused, told to the model and kept with what it wrote."""
        run.tool_calls += 1
        args = call.argument_object()
        if not call.name or args is None:
            run.bad_tool_calls += 1
            problem = "no tool name" if not call.name else "arguments that are not a JSON object"
            run.actions.append(
                ActionRecord(
                    tool=call.name or "(none)",
                    arguments={"raw": call.raw or repr(call.arguments)[:_RAW_LIMIT]},
                    status=ActionStatus.REFUSED,
                    detail=f"malformed tool call: {problem}",
                    at=datetime.now(UTC),
                    by="model",
                )
            )
            return f"error: malformed tool call ({problem}); call it again with an object"
        call = ToolCall(call.name, args, call.raw)
        if call.name in BUILTIN_SPECS:
            return await self._builtin(run, call)
        record = await self.guard.call(call.name, args, run.context, run.offered, by="model")
        if record.status == ActionStatus.REFUSED:
            run.bad_tool_calls += 1
        run.actions.append(record)
        if record.status == ActionStatus.AWAITING_CONFIRMATION:
            self._confirm_request(run, record)
            return f"{call.name}: not executed; a human was asked to confirm it"
        if record.status == ActionStatus.EXECUTED:
            return f"{call.name}: done ({record.detail})"
        return f"error: {call.name} {record.status}: {record.detail}"

    async def _builtin(self, run: _Run, call: ToolCall) -> str:
        """Run one of `BUILTIN_SPECS`; they skip the guard, so their arguments are checked here."""
        errors = validate_arguments(BUILTIN_SPECS[call.name][1], call.arguments)
        if errors:
            run.bad_tool_calls += 1
            _LOGGER.warning(
                "incident %s: %s refused: %s",
                run.incident.incident_id,
                call.name,
                "; ".join(errors),
            )
            return f"error: bad arguments for {call.name}: {'; '.join(errors)}"
        args: dict[str, Any] = dict(call.arguments)
        if call.name == "search_manual":
            hits = await self._search(str(args["query"]))
            self._keep_refs(run, hits)
            return _hits_text(hits)
        if call.name == "write_incident_report":
            run.report = IncidentReport(
                summary=args["summary"],
                probable_cause=args["probable_cause"],
                fix_steps=tuple(args["fix_steps"]),
                manual_refs=tuple(run.refs),
                manual_section=str(args.get("manual_section") or "").strip("[] ") or None,
            )
            return "report saved"
        return self._alert(run, args["message"], Severity(args["severity"]), by="model")

    def _alert(self, run: _Run, message: str, severity: Severity, *, by: str) -> str:
        now = datetime.now(UTC)
        if sum(a.kind == "alert" for a in run.alerts) >= _MAX_ALERTS:
            run.actions.append(
                ActionRecord(
                    tool="alert_operator",
                    arguments={"message": message, "severity": str(severity)},
                    status=ActionStatus.RATE_LIMITED,
                    detail=f"at most {_MAX_ALERTS} alerts per incident",
                    at=now,
                    by=by,
                )
            )
            return f"error: at most {_MAX_ALERTS} alerts per incident"
        run.alerts.append(
            OperatorAlert(
                alert_id=uuid.uuid4().hex,
                kind="alert",
                station_id=run.incident.station_id,
                incident_id=run.incident.incident_id,
                message=message,
                severity=severity,
                at=now,
            )
        )
        run.actions.append(
            ActionRecord(
                tool="alert_operator",
                arguments={"message": message, "severity": str(severity)},
                status=ActionStatus.EXECUTED,
                detail="operator alerted",
                at=now,
                by=by,
            )
        )
        return "operator alerted"

    def _confirm_request(self, run: _Run, record: ActionRecord) -> None:
        severity = run.classification.severity if run.classification else Severity.HIGH
        run.alerts.append(
            OperatorAlert(
                alert_id=record.request_id or uuid.uuid4().hex,
                kind="confirm_request",
                station_id=run.incident.station_id,
                incident_id=run.incident.incident_id,
                message=f"The inspector asks to run {record.tool}: please confirm or decline.",
                severity=severity,
                action=record.tool,
                arguments=record.arguments,
                at=record.at,
            )
        )

    # -- manuals --------------------------------------------------------------------------

    async def _search(self, query: str) -> list[ManualHit]:
        if self.manuals is None:
            return []
        vector: list[float] | None = None
        model = self.manuals_config.embed_model
        if model:
            try:
                vector = (await self.vlm.embed([query], model))[0]
            except VlmUnavailableError as exc:
                _LOGGER.warning("manual search without embeddings: %s", exc)
        manuals = self.manuals
        return await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: manuals.search(
                query,
                limit=self.manuals_config.results,
                query_vector=vector,
                embed_model=model,
            ),
        )

    @staticmethod
    def _keep_refs(run: _Run, hits: list[ManualHit]) -> None:
        seen = {(r.file, r.section, r.page) for r in run.refs}
        for hit in hits:
            if (hit.file, hit.section, hit.page) not in seen:
                seen.add((hit.file, hit.section, hit.page))
                run.refs.append(
                    ManualReference(
                        file=hit.file,
                        section=hit.section,
                        page=hit.page,
                        excerpt=hit.excerpt[:500],
                        score=hit.score,
                    )
                )

    # -- JSON-only flow (models without tool calls) ---------------------------------------

    async def _json_flow(self, run: _Run) -> None:
        assert run.classification is not None
        c = run.classification
        hits = await self._search(f"{c.defect_type} {c.description}")
        self._keep_refs(run, hits)
        manual = "\n".join(f"[{h.reference}] {h.text[:800]}" for h in hits)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": prompts.system_prompt(run.station)},
            {"role": "user", "content": prompts.report_prompt(c.model_dump(mode="json"), manual)},
        ]
        schema = prompts.report_schema()
        for _attempt in range(2):
            run.rounds += 1
            turn = await self.vlm.chat(messages, format=schema)
            try:
                data = json.loads(turn.content)
                errors = validate_arguments(check_schema(schema), data)
                if errors:
                    raise ValueError("; ".join(errors))
                run.report = IncidentReport(
                    summary=data["summary"],
                    probable_cause=data["probable_cause"],
                    fix_steps=tuple(data["fix_steps"]),
                    manual_refs=tuple(run.refs),
                )
                break
            except (ValueError, ValidationError) as exc:
                messages += [
                    {"role": "assistant", "content": turn.content[:_RAW_LIMIT]},
                    {"role": "user", "content": f"Not valid ({exc}). JSON only, per the schema."},
                ]
        await self._auto_actions(run)

    async def _auto_actions(self, run: _Run) -> None:
        c = run.classification
        if c is None or c.defect_type == "no_defect":
            return
        for auto in self.config.auto_actions:
            if auto.classes and c.defect_type not in auto.classes:
                continue
            if c.severity.rank < Severity(auto.min_severity).rank:
                continue
            record = await self.guard.call(
                auto.action, auto.arguments, run.context, run.offered, by="engine"
            )
            run.actions.append(record)
            if record.status == ActionStatus.AWAITING_CONFIRMATION:
                self._confirm_request(run, record)

    async def _engine_report(self, run: _Run) -> IncidentReport:
        """A report from what is known when the model wrote none."""
        c = run.classification
        assert c is not None
        if not run.refs:
            self._keep_refs(run, await self._search(f"{c.defect_type} {c.description}"))
        steps = tuple(f"See {r.file}, {r.section}: {r.excerpt}" for r in run.refs[:3])
        return IncidentReport(
            summary=f"{c.severity} {c.defect_type} on {run.station.name}: {c.description}",
            probable_cause="not determined by the model",
            fix_steps=steps or ("Inspect the part and the station; no manual passage matched.",),
            manual_refs=tuple(run.refs),
            written_by="engine",
        )


def _call_key(call: ToolCall) -> str:
    """One tool call's identity: its tool and arguments (as written, when not an object)."""
    args = call.argument_object()
    written = json.dumps(args, sort_keys=True, default=str) if args is not None else call.raw
    return f"{call.name}\n{written}"


def _hits_text(hits: list[ManualHit]) -> str:
    if not hits:
        return "no matching passage in the manuals"
    return "\n".join(f"{i}. [{h.reference}] {h.text[:800]}" for i, h in enumerate(hits, start=1))
