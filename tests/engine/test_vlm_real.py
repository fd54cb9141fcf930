"""The VLM stage with a real model: a real Ollama (0.5.4, on the CPU) serving Qwen2.5-Coder
1.5B and 0.5B (tests/real_ollama.py). These models call tools and follow JSON schemas but cannot
see, so they judge from the detector's findings; what is checked is what the engine promises
whatever the model: valid classifications, a report from the manual the engine found, guard
rails that hold, and a bad answer counted as the model's, never as the server's.

Seeded and at temperature 0, so a run repeats itself on one machine. Each test prints its
figures (run with -s): status, rounds, tool calls, seconds per incident.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edge_inspector.config import EngineConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.events import ActionStatus, Incident, VlmStatus
from edge_inspector.vlm.client import OllamaVlm
from edge_inspector.vlm.verdict import verdict_of
from tests.engine.test_vlm import (  # the fixtures are the agent tests' own
    Recorder,
    Webhook,
    _defect,
    vlm_config,  # noqa: F401
    webhook,  # noqa: F401
)
from tests.real_ollama import MODEL, SMALL_MODEL

REAL = """\
request_timeout: 300
deadline: 900
max_tool_rounds: 3
temperature: 0
options: {seed: 7, num_predict: 400}
"""
SECTIONS = {"scratch": "Scratches", "dent": "Dents", "crack": "Cracks"}


def _one_per_class(scenes: list[ConveyorFrame], *classes: str) -> list[ConveyorFrame]:
    picked = []
    for name in classes:
        picked.append(next(s for s in scenes if s.truths[0].class_name == name))
    return picked


def _figures(model: str, incident: Incident, seconds: float) -> str:
    vlm = incident.vlm
    assert vlm is not None
    c = vlm.classification
    report = vlm.report
    return (
        f"{model}: {incident.defect_class} -> {vlm.status}"
        f" {c.defect_type + '/' + c.severity if c else '-'}, {vlm.rounds} rounds,"
        f" {vlm.tool_calls} tool calls ({vlm.invalid_tool_calls} refused),"
        f" report by {report.written_by if report else '-'}"
        f" citing {report.manual_section if report else '-'!r}, {seconds:.0f} s"
    )


async def test_the_real_model_classifies_reports_from_the_manual_and_stays_in_the_rails(
    real_ollama: str,
    vlm_config: Callable[..., EngineConfig],  # noqa: F811 (the fixture imported above)
    webhook: Webhook,  # noqa: F811
    scenes: list[ConveyorFrame],
) -> None:
    chosen = _one_per_class(scenes, "scratch")  # one incident: a real model is slow here
    sink = Recorder()
    finished: list[Incident] = []
    async with Engine(vlm_config(real_ollama, model=MODEL, vlm_extra=REAL), sinks=[sink]) as engine:
        for number, scene in enumerate(chosen):
            started = time.monotonic()
            incident = await _defect(engine, scene, part=f"P-{number}")
            done = await sink.final(incident.incident_id, timeout=900)
            print(_figures(MODEL, done, time.monotonic() - started))
            finished.append(done)
        assert engine.enricher is not None
        profile = engine.enricher.agent.profile
        breaker, unavailable = engine.enricher.breaker.state, engine.enricher.unavailable

    # what the engine found out about the model: tools, no vision (the server does not say)
    assert profile is not None and profile.source == "probe"
    assert "tools" in (profile.capabilities or ()) and "vision" not in (profile.capabilities or ())
    assert (breaker, unavailable) == ("closed", 0)
    for done in finished:
        vlm = done.vlm
        assert vlm is not None
        # done, or stopped at the round cap (a model that keeps finding new calls to make)
        assert vlm.status == VlmStatus.DONE or "rounds" in (vlm.error or ""), (vlm.error, vlm.raw)
        assert vlm.mode == "tools" and vlm.evidence == "text"
        assert vlm.classification is not None  # valid against the schema on the first or second try
        assert vlm.verdict == verdict_of(done.defect_class, vlm.classification)
        assert vlm.report is not None
        # the engine looked the defect up before the model wrote: the passage is on the report
        section = SECTIONS[done.defect_class]
        assert any(section in r.section for r in vlm.report.manual_refs), vlm.report.manual_refs
        # guard rails: stop_line needs a person; purge_line is not offered here
        for action in vlm.actions:
            if action.tool == "stop_line":
                assert action.status == ActionStatus.AWAITING_CONFIRMATION
            assert action.tool != "purge_line" or action.status == ActionStatus.REFUSED
        assert sum(a.tool == "alert_operator" and a.status == "executed" for a in vlm.actions) <= 2
    assert {path for path, _ in webhook.calls} <= {"/divert"}
    # the model wrote the reports itself, from the passage it was given, and said where from
    by_model = [
        d for d in finished if d.vlm and d.vlm.report and d.vlm.report.written_by == "model"
    ]
    assert by_model, "the model wrote no report"
    # whether it also named the section it took the fix from is printed, not required: the
    # 1.5B leaves `manual_section` out as often as not (the passage is on the report anyway)


async def test_the_smaller_model_is_judged_on_its_answers_and_never_marks_the_server_down(
    real_ollama: str,
    vlm_config: Callable[..., EngineConfig],  # noqa: F811 (the fixture imported above)
    scenes: list[ConveyorFrame],
) -> None:
    """Qwen2.5-Coder 0.5B writes its tool calls in a fence and gets arguments wrong more
    often: whatever it writes ends done, invalid or failed, with nothing counted against the
    server."""
    sink = Recorder()
    async with Engine(
        vlm_config(real_ollama, model=SMALL_MODEL, vlm_extra=REAL), sinks=[sink]
    ) as engine:
        started = time.monotonic()
        incident = await _defect(engine, _one_per_class(scenes, "spot")[0])
        done = await sink.final(incident.incident_id, timeout=900)
        print(_figures(SMALL_MODEL, done, time.monotonic() - started))
        assert engine.enricher is not None
        breaker, unavailable = engine.enricher.breaker.state, engine.enricher.unavailable
    assert (breaker, unavailable) == ("closed", 0)
    vlm = done.vlm
    assert vlm is not None and vlm.status in (VlmStatus.DONE, VlmStatus.INVALID, VlmStatus.FAILED)
    if vlm.status == VlmStatus.INVALID:
        assert vlm.raw  # what it wrote is kept
    else:
        assert vlm.classification is not None and vlm.report is not None
    refused = [a for a in vlm.actions if a.status == ActionStatus.REFUSED]
    assert vlm.invalid_tool_calls >= len([a for a in refused if a.by == "model"])


async def test_a_server_that_does_not_list_capabilities_is_asked_with_pictures(
    real_ollama: str,
) -> None:
    """Ollama 0.5 lists no capabilities: the template tells tools; the colour probe finds that
    this text model cannot see."""
    from edge_inspector.config import VlmConfig

    vlm = OllamaVlm(VlmConfig(host=real_ollama, model=SMALL_MODEL, request_timeout=300))
    try:
        profile = await vlm.check()
    finally:
        await vlm.close()
    assert profile.source == "probe"
    caps: Any = profile.capabilities
    assert "tools" in caps and "vision" not in caps and not profile.vision
