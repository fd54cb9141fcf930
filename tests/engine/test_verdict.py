"""The model's second opinion: its verdict on the detector's call on every incident update (over
MQTT and the HTTP API), and stations that hold their defects back until it has spoken. The
model is the local Ollama-speaking server, scripted: what it answers is the test's choice."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from edge_inspector.app import Application
from edge_inspector.config import EngineConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.errors import ConfigError
from edge_inspector.events import (
    Classification,
    Incident,
    IncidentState,
    InspectionResult,
    Severity,
    Verdict,
    VlmStatus,
    VlmVerdict,
)
from edge_inspector.mqtt import attach_mqtt
from edge_inspector.sinks import EventSink
from edge_inspector.vlm.verdict import verdict_of
from tests.conftest import jpeg
from tests.mosquitto import Mosquitto, Watcher
from tests.ollama_server import FakeOllama, Reply
from tests.waiting import until

SCHEMA = Path(__file__).parents[2] / "edge_inspector" / "schema" / "incident.schema.json"
CLASSES = ("crack", "dent", "scratch", "spot")


class Told(EventSink):
    """What the sinks were told, in order, and when."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any, float]] = []

    def _add(self, kind: str, payload: Any) -> None:
        self.log.append((kind, payload, time.monotonic()))

    async def on_verdict(self, result: InspectionResult) -> None:
        self._add("verdict", result)

    async def on_incident(self, incident: Incident) -> None:
        self._add("incident", incident)

    async def on_incident_update(self, incident: Incident) -> None:
        self._add("update", incident)

    def of(self, incident_id: str) -> list[tuple[str, Incident, float]]:
        return [
            (kind, payload, at)
            for kind, payload, at in self.log
            if isinstance(payload, Incident) and payload.incident_id == incident_id
        ]

    def kinds(self, incident_id: str) -> list[str]:
        return [kind for kind, _, _ in self.of(incident_id)]


def answers(plan: dict[str, str], delay: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """The model: classifies each part's defect as `plan` says (`same`: the detector's class,
    `other_class`: another of the station's classes, or a class as written), then ends its tool
    loop at once."""

    def script(body: dict[str, Any]) -> Reply:
        if "defect_type" not in (body.get("format") or {}).get("properties", {}):
            return Reply(content="Done.")
        prompt = body["messages"][-1]["content"]
        detected = re.search(r"The detector reports (\w+)", prompt)
        part = re.search(r"Part (\S+)\.", prompt)
        assert detected and part, prompt
        choice = plan[part.group(1)]
        if choice == "same":
            choice = detected.group(1)
        elif choice == "other_class":
            choice = next(c for c in CLASSES if c != detected.group(1))
        return Reply.json(
            {
                "defect_type": choice,
                "severity": "medium",
                "confidence": 0.8,
                "description": f"looks like {choice}",
            },
            delay=delay,
        )

    return script


@pytest.fixture
def config(
    make_config: Callable[..., EngineConfig], ollama: FakeOllama
) -> Callable[..., EngineConfig]:
    def _make(*, hold: str = "", extra: str = "", request_timeout: float = 10) -> EngineConfig:
        station = textwrap.dedent("""\
            - id: press
              name: Press 2
              mode: triggered
              source: {type: push}
              model: {path: MODEL, imgsz: 320}
              defects: {scratch: 0.3, dent: 0.3, crack: 0.3, spot: 0.3}
            """)
        if hold:
            station += f"  vlm_hold: {hold}\n"
        vlm = (
            f"vlm: {{host: {ollama.url}, request_timeout: {request_timeout}, "
            "retry_interval: 0.3, deadline: 30}\n"
        )
        return make_config(station, extra=vlm + textwrap.dedent(extra))

    return _make


async def _defect(engine: Engine, scene: ConveyorFrame, part: str) -> Incident:
    """Inspect a picture with one defect; the incident as stored (at once: before anyone is
    told, and before the model answers)."""
    result = await engine.stations["press"].inspect_image(jpeg(scene.image), part_id=part)
    assert result.new_incident_ids, "the demo model should find the defect"
    async with asyncio.timeout(10):  # the station's output worker stores it just after
        while (incident := await engine.store.incident(result.new_incident_ids[0])) is None:
            await asyncio.sleep(0.02)
    return incident


# -- the verdict --------------------------------------------------------------------------------


def _classified(defect_type: str) -> Classification:
    return Classification(
        defect_type=defect_type, severity=Severity.LOW, confidence=0.7, description="seen"
    )


def test_the_verdict_is_the_models_call_on_the_detectors_class() -> None:
    assert verdict_of("scratch", _classified("scratch")) is VlmVerdict.CONFIRMED
    assert verdict_of("scratch", _classified("no_defect")) is VlmVerdict.DISPUTED
    assert verdict_of("scratch", _classified("dent")) is VlmVerdict.RECLASSIFIED
    assert verdict_of("scratch", _classified("other")) is VlmVerdict.RECLASSIFIED
    assert verdict_of("scratch", None) is None  # no classification (invalid, not answered)


def test_the_hold_is_bounded_and_needs_the_vlm(
    make_config: Callable[..., EngineConfig], config: Callable[..., EngineConfig]
) -> None:
    assert not config().stations[0].vlm_hold.enabled  # off unless asked
    held = config(hold="{enabled: true}").stations[0].vlm_hold
    assert held.enabled and held.max_wait == 30
    for wait in (0, 601, "soon"):
        with pytest.raises(ConfigError, match=r"vlm_hold\.max_wait"):
            config(hold=f"{{enabled: true, max_wait: {wait}}}")
    with pytest.raises(ConfigError, match=r"station press: vlm_hold .* the VLM is off"):
        make_config(
            """
            - id: press
              name: Press 2
              source: {type: push}
              model: {path: MODEL}
              defects: {scratch: 0.3}
              vlm_hold: {enabled: true}
            """
        )


# -- on every surface -------------------------------------------------------------------------


async def test_each_verdict_reaches_the_incident_update_on_mqtt_and_the_http_api(
    broker: Mosquitto,
    ollama: FakeOllama,
    config: Callable[..., EngineConfig],
    scenes: list[ConveyorFrame],
) -> None:
    ollama.script = answers({"P-1": "same", "P-2": "no_defect", "P-3": "other_class"})
    app = Application(
        config(extra=f"http: {{port: 0}}\nmqtt: {{url: '{broker.url}', node_id: plant_a}}\n")
    )
    watcher = Watcher(broker.port, "edge_inspector/press/#")
    told = Told()
    app.engine.add_sink(told)
    got: dict[str, dict[str, Any]] = {}
    try:
        await app.start()
        assert app.api is not None and app.bridge is not None
        incidents = [
            await _defect(app.engine, scene, part)
            for scene, part in zip(scenes, ("P-1", "P-2", "P-3"), strict=False)
        ]
        ids = [i.incident_id for i in incidents]

        def answered() -> dict[str, dict[str, Any]]:
            updates = [json.loads(p) for p in watcher.on("edge_inspector/press/incident")]
            return {u["incident_id"]: u for u in updates if u["vlm"]["verdict"]}

        await asyncio.to_thread(watcher.wait, lambda: set(answered()) == set(ids), 30)
        async with aiohttp.ClientSession() as http:
            for ident in ids:
                async with http.get(f"{app.api.url}/api/incidents/{ident}") as response:
                    assert response.status == 200
                    got[ident] = await response.json()
    finally:
        await app.stop()
        watcher.close()

    updates = answered()
    schema = json.loads(SCHEMA.read_text())
    expected = ["confirmed", "disputed", "reclassified"]
    for ident, verdict in zip(ids, expected, strict=True):
        jsonschema.validate(updates[ident], schema)
        assert updates[ident]["vlm"]["verdict"] == verdict, updates[ident]["vlm"]
        assert got[ident]["vlm"]["verdict"] == verdict  # the HTTP API: as stored
    # the defect went out at once, before the model's verdict (no hold at this station)
    defects = [json.loads(p) for p in watcher.on("edge_inspector/press/defect")]
    assert {d["incident_id"] for d in defects} == set(ids)
    assert all(d["vlm"]["status"] == "pending" and d["vlm"]["verdict"] is None for d in defects)
    # a disputed defect stays open for a person: the model's verdict informs, it closes nothing
    assert updates[ids[1]]["state"] == "open"
    assert updates[ids[1]]["vlm"]["classification"]["defect_type"] == "no_defect"


# -- holding defects back until the model has spoken --------------------------------------------


async def test_a_held_defect_goes_out_when_the_model_has_spoken_carrying_its_verdict(
    ollama: FakeOllama, config: Callable[..., EngineConfig], scenes: list[ConveyorFrame]
) -> None:
    """The verdict is known once the model has classified the defect: it goes out then, still
    `pending`, and the report follows as an update (not after the whole tool loop)."""
    classify = answers({"P-1": "no_defect"}, delay=1.5)
    ollama.script = lambda body: (
        classify(body) if body.get("format") else Reply(content="Done.", delay=2.0)
    )
    told = Told()

    def reported() -> bool:
        return any(
            kind == "update" and one.vlm is not None and one.vlm.status is VlmStatus.DONE
            for kind, one, _ in told.of(incident.incident_id)
        )

    async with Engine(config(hold="{enabled: true, max_wait: 30}"), sinks=[told]) as engine:
        incident = await _defect(engine, scenes[0], "P-1")
        assert incident.vlm is not None and incident.vlm.status is VlmStatus.PENDING
        await until(lambda: ollama.requests, "the model was asked")
        # while the model thinks: the part's verdict is out (the PLC's, the `defect` sensor's),
        # the defect is not
        assert [k for k, _, _ in told.log] == ["verdict"]
        assert told.log[0][1].verdict is Verdict.FAIL
        await until(reported, "the model's report")
        stored = await engine.store.incident(incident.incident_id)
    kinds = told.kinds(incident.incident_id)
    assert kinds[0] == "incident" and kinds.count("incident") == 1  # the defect first, once
    (_, defect, out_at), *updates = told.of(incident.incident_id)
    assert defect.vlm is not None and defect.vlm.status is VlmStatus.PENDING
    assert defect.vlm.verdict is VlmVerdict.DISPUTED  # out on the classification
    assert defect.state is IncidentState.OPEN  # disputed, still for a person to close
    (_, final, final_at) = updates[-1]
    assert final.vlm is not None and final.vlm.status is VlmStatus.DONE
    assert final.vlm.verdict is VlmVerdict.DISPUTED
    assert final == stored
    assert final_at - out_at >= 1.5, "the defect waited for the tool loop"


async def test_a_held_defect_goes_out_unconfirmed_after_max_wait_and_the_verdict_follows(
    ollama: FakeOllama, config: Callable[..., EngineConfig], scenes: list[ConveyorFrame]
) -> None:
    ollama.script = answers({"P-1": "same"}, delay=3)  # slower than the line waits
    told = Told()
    async with Engine(config(hold="{enabled: true, max_wait: 1}"), sinks=[told]) as engine:
        incident = await _defect(engine, scenes[0], "P-1")
        await until(lambda: told.kinds(incident.incident_id), "the defect, unconfirmed")
        released = await engine.store.incident(incident.incident_id)
        await until(
            lambda: any(
                one.vlm is not None and one.vlm.status is VlmStatus.DONE
                for _, one, _ in told.of(incident.incident_id)
            ),
            "the model's answer",
        )
        answered = await engine.store.incident(incident.incident_id)
    (_, defect, at), *updates = told.of(incident.incident_id)
    update = updates[-1][1]
    inspected_at = told.log[0][2]  # the part's verdict: told just before the incident is held
    assert at - inspected_at >= 1.0, "released before max_wait"
    assert defect.vlm is not None and defect.vlm.status is VlmStatus.PENDING
    assert defect.vlm.verdict is VlmVerdict.UNCONFIRMED
    assert released == defect  # recorded as it went out
    # the model's answer, later, replaces `unconfirmed`
    assert update.vlm is not None and update.vlm.verdict is VlmVerdict.CONFIRMED
    assert update == answered


async def test_a_defect_held_when_the_engine_stops_goes_out_unconfirmed_over_mqtt(
    broker: Mosquitto,
    ollama: FakeOllama,
    config: Callable[..., EngineConfig],
    scenes: list[ConveyorFrame],
) -> None:
    ollama.script = lambda body: Reply(hang=True)  # the model never answers
    engine = Engine(
        config(
            hold="{enabled: true, max_wait: 600}",
            extra=f"mqtt: {{url: '{broker.url}', node_id: plant_a}}\n",
            request_timeout=120,
        )
    )
    bridge = attach_mqtt(engine)
    assert bridge is not None
    watcher = Watcher(broker.port, "edge_inspector/press/#")
    running = False
    try:
        await engine.start()
        running = True
        await bridge.start()
        await asyncio.to_thread(bridge.ready.wait, 10)
        incidents = [await _defect(engine, s, f"P-{n}") for n, s in enumerate(scenes[:2])]
        await until(lambda: len(ollama.requests) == 1, "the model was asked")
        assert engine.sinks.held == 2
        assert watcher.on("edge_inspector/press/defect") == []
        running = False
        await engine.stop()  # as the service stops: the engine first, then MQTT
        await asyncio.to_thread(
            watcher.wait, lambda: len(watcher.on("edge_inspector/press/defect")) == 2, 20
        )
    finally:
        if running:
            await engine.stop()
        await bridge.stop()
        watcher.close()
    defects = [json.loads(p) for p in watcher.on("edge_inspector/press/defect")]
    assert [d["incident_id"] for d in defects] == [i.incident_id for i in incidents]  # in order
    assert all(d["vlm"]["verdict"] == "unconfirmed" for d in defects)
    assert engine.sinks.held == 0 and engine.sinks.released_unconfirmed == 2


async def test_a_websocket_client_catching_up_gets_a_held_defect_only_when_it_is_released(
    ollama: FakeOllama, config: Callable[..., EngineConfig], scenes: list[ConveyorFrame]
) -> None:
    ollama.script = answers({"P-1": "same"}, delay=2)
    app = Application(config(hold="{enabled: true, max_wait: 30}", extra="http: {port: 0}\n"))
    await app.start()
    try:
        assert app.api is not None
        since = datetime.now(UTC) - timedelta(minutes=1)
        incident = await _defect(app.engine, scenes[0], "P-1")
        await until(lambda: ollama.requests, "the model was asked")
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{app.api.url}/api/ws", params={"since": since.isoformat()}) as ws,
        ):
            greeting = []
            while (message := await ws.receive_json(timeout=30))["type"] != "ready":
                greeting.append(message["type"])
            assert "incident" not in greeting, "a held defect was replayed"
            while (message := await ws.receive_json(timeout=30))["type"] != "incident":
                pass
    finally:
        await app.stop()
    assert message["data"]["incident_id"] == incident.incident_id
    assert message["data"]["vlm"]["verdict"] == "confirmed"


# -- with a real model ----------------------------------------------------------------------------


async def test_a_real_model_releases_a_held_defect_with_its_verdict(
    real_ollama: str, make_config: Callable[..., EngineConfig], scenes: list[ConveyorFrame]
) -> None:
    """The real small model (tests/real_ollama.py) on the CPU: the defect waits for the model's
    classification, then goes out once with the verdict it gives, and the report follows as an
    update (the JSON-only flow). Prints how long the defect was held (run with -s)."""
    from tests.real_ollama import SMALL_MODEL

    config = make_config(
        """
        - id: press
          name: Press 2
          mode: triggered
          source: {type: push}
          model: {path: MODEL, imgsz: 320}
          defects: {scratch: 0.3, dent: 0.3, crack: 0.3, spot: 0.3}
          vlm_hold: {enabled: true, max_wait: 600}
        """,
        extra=textwrap.dedent(f"""\
            vlm:
              host: {real_ollama}
              model: "{SMALL_MODEL}"
              tool_mode: json
              request_timeout: 300
              deadline: 600
              temperature: 0
              options: {{seed: 7, num_predict: 200}}
            """),
    )
    told = Told()
    async with Engine(config, sinks=[told]) as engine:
        incident = await _defect(engine, scenes[0], "P-1")
        await until(
            lambda: any(
                one.vlm is not None and one.vlm.status is not VlmStatus.PENDING
                for _, one, _ in told.of(incident.incident_id)
            ),
            "the model's whole answer",
            600,
        )
    (_, verdict_told, inspected_at), *_ = told.log
    (_, defect, released_at), *updates = told.of(incident.incident_id)
    assert verdict_told.verdict is Verdict.FAIL  # the part's verdict went out at once
    assert told.kinds(incident.incident_id).count("incident") == 1
    vlm = defect.vlm
    assert vlm is not None and vlm.classification is not None, "released before the verdict"
    expected = verdict_of(defect.defect_class, vlm.classification)
    assert vlm.verdict is expected and expected is not None
    final = updates[-1][1].vlm
    assert final is not None and final.verdict is expected
    said = vlm.classification.defect_type if vlm.classification else "-"
    print(
        f"{SMALL_MODEL}: {defect.defect_class} -> {vlm.status} {said}: {vlm.verdict}, "
        f"held {released_at - inspected_at:.1f} s"
    )
