"""MQTT commands a hostile or careless client sends, against a real Mosquitto: each is refused
on the station's error topic (an unknown station's too), nothing is coerced, a burst is worked
through or refused as busy, and the log is not flooded."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from edge_inspector.config import EngineConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.errors import InputError
from edge_inspector.events import Incident
from edge_inspector.mqtt import MqttBridge, attach_mqtt
from edge_inspector.sinks import EventSink
from tests.camera_server import camera
from tests.conftest import camera_station, jpeg
from tests.mosquitto import Mosquitto, Watcher


@dataclass
class Line:
    engine: Engine
    bridge: MqttBridge
    watcher: Watcher

    def send(self, topic: str, payload: bytes | str) -> None:
        self.watcher.client.publish(f"edge_inspector/{topic}", payload, qos=1)

    def errors(self, station: str) -> list[dict[str, str]]:
        return [json.loads(p) for p in self.watcher.on(f"edge_inspector/{station}/error")]

    async def wait(self, check: Callable[[], object], timeout: float = 30) -> None:
        await asyncio.to_thread(self.watcher.wait, check, timeout)


@asynccontextmanager
async def _line(
    broker: Mosquitto, make_config: Callable[..., EngineConfig], image: bytes
) -> AsyncIterator[Line]:
    async with camera() as cam:
        cam.snapshot_body = image
        config = make_config(
            camera_station(cam.url),
            """
            - id: press
              name: Press
              source: {type: push}
              model: {path: MODEL, imgsz: 320}
              defects: {scratch: 0.5}
            """,
            extra=f"mqtt: {{url: '{broker.url}'}}\n",
        )
        watcher = Watcher(broker.port, "edge_inspector/+/error", "edge_inspector/+/state")
        engine = Engine(config)
        bridge = attach_mqtt(engine)
        assert bridge is not None
        await engine.start()
        await bridge.start()
        try:
            assert await asyncio.to_thread(bridge.ready.wait, 10)
            yield Line(engine, bridge, watcher)
        finally:
            await engine.stop()
            await bridge.stop()
            watcher.close()


async def test_every_malformed_command_is_answered_and_changes_nothing(
    broker: Mosquitto,
    make_config: Callable[..., EngineConfig],
    clean_scene: ConveyorFrame,
) -> None:
    async with _line(broker, make_config, jpeg(clean_scene.image)) as line:
        gate = line.engine.stations["gate"]
        before = (dict(gate.rules.thresholds), gate.enabled)
        refused = {
            b"[" * 2_000 + b"]" * 2_000: "nested",  # within the 4 KB a command may be
            b'{"threshold": ' + b"7" * 4_000 + b"}": "digits",
            b'{"threshold": "0.5"}': "threshold",  # no string-to-number coercion
            b'{"threshold": true}': "threshold",  # nor a boolean as a number
            b'{"enabled": "off"}': "enabled",
            b'{"enabled": 1}': "enabled",  # nor a number as a boolean
            b'{"threshold": 0}': "threshold",  # a real range
            b'{"threshold": 5e-324}': "threshold",
            b'{"threshold": NaN}': "NaN",
            b'{"thresholds": {"a": {"b": {"c": {"d": 1}}}}}': "nested",
            b"\xff\xfe": "UTF-8",
            b"x" * 5000: "bytes",
        }
        for payload in refused:
            line.send("gate/set", payload)
        await line.wait(lambda: len(line.errors("gate")) >= len(refused))
        errors = line.errors("gate")
        assert len(errors) == len(refused)
        for error, expected in zip(errors, refused.values(), strict=True):
            assert expected in error["error"], error
            assert error["command"] == "set"
        assert (dict(gate.rules.thresholds), gate.enabled) == before

        # a station that is not here (or in the wrong case) is answered on its own error topic
        line.send("nosuch/set", '{"enabled": false}')
        line.send("GATE/inspect", "")
        await line.wait(lambda: line.errors("nosuch") and line.errors("GATE"))
        assert "no station 'nosuch'" in line.errors("nosuch")[0]["error"]
        assert "case-sensitive: 'gate'" in line.errors("GATE")[0]["error"]

        # a push station has no camera to take a picture with: refused at once, not in 30 s
        started = time.monotonic()
        line.send("press/inspect", "{}")
        await line.wait(lambda: line.errors("press"), timeout=10)
        assert "pushed to it" in line.errors("press")[0]["error"]
        assert time.monotonic() - started < 10


async def test_a_burst_of_inspect_commands_is_worked_through_or_refused_as_busy(
    broker: Mosquitto,
    make_config: Callable[..., EngineConfig],
    clean_scene: ConveyorFrame,
    caplog: pytest.LogCaptureFixture,
) -> None:
    burst = 400
    async with _line(broker, make_config, jpeg(clean_scene.image)) as line:
        gate = line.engine.stations["gate"]
        caplog.set_level(logging.WARNING, logger="edge_inspector.mqtt.bridge")
        for n in range(burst):
            line.send("gate/inspect", json.dumps({"part_id": f"P-{n}"}))
        # every command is accounted for: inspected, or answered "busy"
        await line.wait(lambda: gate.inspections + len(line.errors("gate")) >= burst, 120)
        await line.wait(lambda: not line.bridge._waiting.get("gate"), 60)
        busy = line.errors("gate")
        assert gate.inspections + len(busy) == burst
        assert gate.inspections >= 1
        assert all(e["error"].startswith("busy:") for e in busy)
        # hundreds of refusals, a handful of log lines
        refusals = [r for r in caplog.records if "refused inspect" in r.getMessage()]
        assert 1 <= len(refusals) <= 10


async def test_a_missed_defect_report_is_told_once_and_never_again_as_a_new_defect(
    broker: Mosquitto,
    make_config: Callable[..., EngineConfig],
    clean_scene: ConveyorFrame,
) -> None:
    told: list[str] = []

    class Recorder(EventSink):
        async def on_incident(self, incident: Incident) -> None:
            told.append(f"incident {incident.incident_id}")

        async def on_missed_defect(self, incident: Incident) -> None:
            told.append(f"missed {incident.incident_id}")

    async with _line(broker, make_config, jpeg(clean_scene.image)) as line:
        watcher = Watcher(broker.port, "edge_inspector/#", client_id="missed-watcher")
        line.engine.sinks.add(Recorder())
        with pytest.raises(InputError, match="'rust' is not one of"):
            await line.engine.report_missed_defect("gate", "rust", by="qa")
        with pytest.raises(InputError, match="part_id"):
            await line.engine.report_missed_defect("gate", "dent", by="qa", part_id="P" * 129)
        incident = await line.engine.report_missed_defect("gate", "dent", by="qa", part_id="P-7")
        assert told == [f"missed {incident.incident_id}"]  # not a new detection
        await asyncio.to_thread(watcher.wait, lambda: watcher.on("edge_inspector/gate/missed"))
        sent = json.loads(watcher.on("edge_inspector/gate/missed")[0])
        assert (sent["incident_id"], sent["part_id"]) == (incident.incident_id, "P-7")
        assert not watcher.on("edge_inspector/gate/defect")
        await line.wait(lambda: line.bridge.queued == 0)  # the broker has it
        watcher.close()
    # the next start's catch-up finds it sent: nothing is queued again, on any topic
    config = make_config(
        """
        - id: gate
          name: Gate
          source: {type: push}
          model: {path: MODEL, imgsz: 320}
          defects: {dent: 0.4}
        """,
        extra=f"mqtt: {{url: '{broker.url}'}}\n",
    )
    engine = Engine(config)
    bridge = attach_mqtt(engine)
    assert bridge is not None
    await engine.start()
    await bridge.start()
    try:
        assert bridge.queued == 0  # (before the fix: queued again on `defect`, as if new)
    finally:
        await engine.stop()
        await bridge.stop()
