"""MQTT against a real Mosquitto: discovery, retained state, events, commands, outages, auth."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import pytest

from edge_inspector.config import EngineConfig, MqttConfig, StationConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.errors import ConfigError
from edge_inspector.events import BoundingBox, Detection, Incident, ModelInfo, StationState
from edge_inspector.mqtt import MqttBridge, Outbox, attach_mqtt, parse_broker_url
from tests.camera_server import camera
from tests.conftest import jpeg
from tests.mosquitto import Mosquitto, Watcher
from tests.waiting import until

SCHEMA = Path(__file__).parents[2] / "edge_inspector" / "schema"


def _incident(n: int) -> Incident:
    box = BoundingBox(x1=1, y1=2, x2=30, y2=40)
    det = Detection(class_name="dent", class_id=1, confidence=0.9, box=box, defect=True)
    return Incident(
        incident_id=f"inc-{n:04d}",
        station_id="belt",
        station_name="Belt",
        created_at=datetime.now(UTC),
        inspection_id=f"i{n}",
        defect_class="dent",
        confidence=0.9,
        boxes=(box,),
        detections=(det,),
        model=ModelInfo(name="m.pt", sha256="0" * 64),
        latency_ms=10,
    )


def _station() -> StationConfig:
    return StationConfig.model_validate(
        {
            "id": "belt",
            "name": "Belt",
            "source": {"type": "push"},
            "model": {"path": "m.pt"},
            "defects": {"dent": 0.5},
        }
    )


def test_broker_urls() -> None:
    url = parse_broker_url("mqtts://ops%40plant:p%3Ass@broker.local")
    assert (url.host, url.port, url.tls, url.username, url.password) == (
        "broker.local",
        8883,
        True,
        "ops@plant",
        "p:ss",
    )
    assert url.redacted() == "mqtts://ops@plant:***@broker.local:8883"
    assert parse_broker_url("mqtt://10.0.0.2").port == 1883
    for bad in ("http://x", "mqtt://", "mqtt://host:99999"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)


async def test_engine_on_the_bus_discovery_state_defects_and_image(
    tmp_path: Path,
    broker: Mosquitto,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, scene in enumerate(s for s in defect_scenes[:4] for _ in range(3)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene.image)
    config = make_config(
        f"""
        - id: belt
          name: Belt
          line: Line 2
          source: {{type: folder, path: {folder}}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
          fps: null
          tracking: {{enabled: false}}
          debounce: {{n: 1, m: 1}}
    """,
        extra=f"mqtt: {{url: '{broker.url}', node_id: plant_a}}\n",
    )
    watcher = Watcher(broker.port, "edge_inspector/#", "homeassistant/#")
    engine = Engine(config)
    bridge = attach_mqtt(engine)
    assert bridge is not None
    await engine.start()
    await bridge.start()
    await asyncio.wait_for(engine.wait_finished(), 60)
    incidents = engine.stations["belt"].incidents
    assert incidents >= 4
    await asyncio.to_thread(
        watcher.wait, lambda: len(watcher.on("edge_inspector/belt/defect")) >= incidents
    )
    await engine.stop()
    await bridge.stop()
    watcher.close()

    [discovery] = watcher.on("homeassistant/device/edge_inspector_plant_a_belt/config")
    payload = json.loads(discovery)
    assert payload["device"]["identifiers"] == ["edge_inspector_plant_a_belt"]
    assert payload["device"]["suggested_area"] == "Line 2"
    platforms = {k: v["p"] for k, v in payload["components"].items()}
    assert platforms == {
        "inspections": "sensor",
        "defects": "sensor",
        "defect_rate": "sensor",
        "yield": "sensor",
        "false_reject_rate": "sensor",
        "false_accept_rate": "sensor",
        "out_of_control": "binary_sensor",
        "last_defect_class": "sensor",
        "last_verdict": "sensor",
        "latency": "sensor",
        "defect": "binary_sensor",
        "defect_event": "event",
        "last_defect_image": "image",
        "inspection_enabled": "switch",
        "inspect_now": "button",
        "confidence_threshold": "number",
    }
    assert payload["components"]["defect_event"]["event_types"] == [
        "crack",
        "dent",
        "scratch",
        "spot",
    ]
    assert all(
        c["unique_id"].startswith("edge_inspector_plant_a_belt_")
        for c in payload["components"].values()
    )
    schema = json.loads((SCHEMA / "incident.schema.json").read_text())
    defects = [json.loads(p) for p in watcher.on("edge_inspector/belt/defect")]
    for defect in defects:
        jsonschema.validate(defect, schema)
    assert len({d["incident_id"] for d in defects}) == incidents
    last_state = json.loads(watcher.on("edge_inspector/belt/state")[-1])
    assert last_state["inspections"] == 12
    assert last_state["incidents"] == incidents
    assert last_state["threshold"] == 0.4
    assert watcher.on("edge_inspector/belt/image")[-1].startswith(b"\xff\xd8")
    assert watcher.on("edge_inspector/status")[-1] == b"offline"  # said at a clean stop


async def test_commands_are_applied_or_refused_with_a_reason(
    broker: Mosquitto,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
) -> None:
    async with camera() as cam:
        cam.snapshot_body = jpeg(defect_scenes[0].image)
        config = make_config(
            f"""
            - id: gate
              name: Gate
              mode: triggered
              source: {{type: http_snapshot, url: "{cam.url}/snapshot.jpg"}}
              model: {{path: MODEL, imgsz: 320}}
              defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
        """,
            extra=f"mqtt: {{url: '{broker.url}', node_id: plant_a}}\n",
        )
        watcher = Watcher(broker.port, "edge_inspector/#")
        engine = Engine(config)
        bridge = attach_mqtt(engine)
        assert bridge is not None
        await engine.start()
        await bridge.start()
        try:
            assert await asyncio.to_thread(bridge.ready.wait, 10)
            send = watcher.client.publish
            send(
                "edge_inspector/gate/inspect",
                json.dumps({"part_id": "P-9", "lot_id": "L-1"}),
                qos=1,
            )
            await asyncio.to_thread(watcher.wait, lambda: watcher.on("edge_inspector/gate/defect"))
            defect = json.loads(watcher.on("edge_inspector/gate/defect")[0])
            assert (defect["part_id"], defect["lot_id"]) == ("P-9", "L-1")

            send("edge_inspector/gate/set", '{"threshold": 0.8}', qos=1)
            await asyncio.to_thread(
                watcher.wait,
                lambda: any(
                    json.loads(p)["threshold"] == 0.8
                    for p in watcher.on("edge_inspector/gate/state")
                ),
            )
            assert engine.stations["gate"].rules.thresholds == dict.fromkeys(
                ["scratch", "dent", "crack", "spot"], 0.8
            )
            # A change made elsewhere (an HA service, the API) shows in the MQTT state too.
            await engine.set_threshold("gate", "dent", 0.55)
            await asyncio.to_thread(
                watcher.wait,
                lambda: any(
                    json.loads(p)["thresholds"].get("dent") == 0.55
                    for p in watcher.on("edge_inspector/gate/state")
                ),
            )
            send("edge_inspector/gate/set", '{"enabled": false}', qos=1)
            await asyncio.to_thread(watcher.wait, lambda: not engine.stations["gate"].enabled)

            before = engine.stations["gate"].rules.thresholds
            for bad in (
                b"not json",
                b'{"threshold": 1.5}',
                b'{"thresholds": {"rust": 0.5}}',
                b'{"colour": "red"}',
                b"{}",
            ):
                send("edge_inspector/gate/set", bad, qos=1)
            send("edge_inspector/gate/inspect", b'{"part_id": ""}', qos=1)
            await asyncio.to_thread(
                watcher.wait, lambda: len(watcher.on("edge_inspector/gate/error")) >= 6
            )
            errors = [json.loads(p) for p in watcher.on("edge_inspector/gate/error")]
            assert "not JSON" in errors[0]["error"]
            assert "threshold" in errors[1]["error"]
            assert "rust" in errors[2]["error"]
            assert "colour" in errors[3]["error"]
            assert "expected at least one" in errors[4]["error"]
            assert errors[5]["command"] == "inspect"
            assert engine.stations["gate"].rules.thresholds == before  # nothing changed
        finally:
            await engine.stop()
            await bridge.stop()
            watcher.close()


async def test_a_broker_outage_mid_burst_loses_no_defect(tmp_path: Path, broker: Mosquitto) -> None:
    watcher = Watcher(broker.port, "edge_inspector/belt/defect", client_id="burst-watcher")
    await asyncio.to_thread(watcher.wait, watcher.client.is_connected)
    bridge = MqttBridge(
        MqttConfig(url=broker.url, node_id="n1", discovery=False),
        [_station()],
        outbox_path=tmp_path / "outbox.sqlite3",
    )
    await bridge.start()
    await asyncio.to_thread(bridge.connected.wait, 10)
    for n in range(30):
        await bridge.on_incident(_incident(n))
    broker.stop()  # in the middle of the burst
    for n in range(30, 60):
        await bridge.on_incident(_incident(n))
    assert bridge.queued >= 30, "unacknowledged defects must wait in the outbox"
    broker.start()
    for n in range(60, 90):
        await bridge.on_incident(_incident(n))
    await asyncio.to_thread(
        watcher.wait,
        lambda: (
            len({json.loads(p)["incident_id"] for p in watcher.on("edge_inspector/belt/defect")})
            == 90
        ),
        30,
    )
    await asyncio.to_thread(watcher.wait, lambda: bridge.queued == 0)
    await bridge.stop()
    watcher.close()
    ids = [json.loads(p)["incident_id"] for p in watcher.on("edge_inspector/belt/defect")]
    assert sorted(set(ids)) == [f"inc-{n:04d}" for n in range(90)]


async def test_the_outbox_survives_a_restart_of_the_publisher(
    tmp_path: Path, broker: Mosquitto
) -> None:
    broker.stop()
    first = MqttBridge(
        MqttConfig(url=broker.url, node_id="n1"),
        [_station()],
        outbox_path=tmp_path / "outbox.sqlite3",
    )
    await first.start()
    for n in range(5):
        await first.on_incident(_incident(n))
    await first.stop()
    broker.start()
    watcher = Watcher(broker.port, "edge_inspector/belt/defect")
    second = MqttBridge(
        MqttConfig(url=broker.url, node_id="n1"),
        [_station()],
        outbox_path=tmp_path / "outbox.sqlite3",
    )
    await second.start()
    await asyncio.to_thread(
        watcher.wait, lambda: len(watcher.on("edge_inspector/belt/defect")) >= 5
    )
    await second.stop()
    watcher.close()
    ids = [json.loads(p)["incident_id"] for p in watcher.on("edge_inspector/belt/defect")]
    assert ids[:5] == [f"inc-{n:04d}" for n in range(5)]  # in order


async def test_password_listener_accepts_the_right_login_only(
    tmp_path: Path, broker: Mosquitto
) -> None:
    good = MqttBridge(
        MqttConfig(node_id="good", discovery=False),
        [_station()],
        url=f"mqtt://{Mosquitto.USER}:{Mosquitto.PASSWORD}@127.0.0.1:{broker.auth_port}",
        outbox_path=tmp_path / "a.sqlite3",
    )
    bad = MqttBridge(
        MqttConfig(node_id="bad", discovery=False),
        [_station()],
        url=f"mqtt://{Mosquitto.USER}:wrong@127.0.0.1:{broker.auth_port}",
        outbox_path=tmp_path / "b.sqlite3",
    )
    await good.start()
    await bad.start()
    try:
        assert await asyncio.to_thread(good.connected.wait, 10)
        assert not await asyncio.to_thread(bad.connected.wait, 2)
    finally:
        await good.stop()
        await bad.stop()


def test_sigkill_mid_burst_then_restart_loses_no_defect(
    tmp_path: Path,
    broker: Mosquitto,
    demo_model: Path,
    defect_scenes: list[ConveyorFrame],
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, scene in enumerate(defect_scenes):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene.image)
    config = tmp_path / "c.yaml"
    config.write_text(f"""
stations:
  - id: belt
    name: Belt
    source: {{type: folder, path: {folder}, loop: true}}
    model: {{path: {demo_model}, imgsz: 320}}
    defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
    fps: 8
    tracking: {{enabled: false}}
    debounce: {{n: 1, m: 2}}
store: {{path: {tmp_path / "store"}}}
mqtt: {{node_id: killed, keepalive: 5}}
""")
    watcher = Watcher(broker.port, "edge_inspector/#", client_id="kill-watcher")
    cli = [
        sys.executable,
        "-m",
        "edge_inspector.cli",
        "run",
        "-c",
        str(config),
        "--mqtt",
        broker.url,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cli, env=env, stderr=subprocess.DEVNULL)
    try:
        watcher.wait(lambda: len(watcher.on("edge_inspector/belt/defect")) >= 3, 120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    watcher.wait(lambda: watcher.on("edge_inspector/status")[-1:] == [b"offline"], 30)  # last will
    history = tmp_path / "store" / "history.sqlite3"
    before_restart = _stored(history)
    assert before_restart, "the first run stored no incident"
    second = subprocess.Popen(cli, env=env, stderr=subprocess.DEVNULL)
    try:
        watcher.wait(lambda: watcher.on("edge_inspector/status")[-1:] == [b"online"], 120)

        # The second run sends what the first stored but never got onto the bus, and carries
        # on: it has stored incidents of its own, and every stored incident is on the bus.
        def caught_up() -> bool:
            stored = _stored(history)
            return stored > before_restart and stored <= _published(watcher)

        watcher.wait(caught_up, 120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    watcher.wait(lambda: watcher.on("edge_inspector/status")[-1:] == [b"offline"], 10)
    stored = _stored(history)
    # Defects handed to the client as it stopped may arrive just after its "offline".
    with suppress(AssertionError):  # what is missing is said below
        watcher.wait(lambda: stored <= _published(watcher), 10)
    watcher.close()
    published = _published(watcher)
    assert stored == published, f"lost on the bus: {sorted(stored - published)[:5]}"


def _stored(history: Path) -> set[str]:
    """The incidents in the engine's store (it may be writing meanwhile: the store is WAL)."""
    with closing(sqlite3.connect(history, timeout=10)) as db:
        return {row[0] for row in db.execute("SELECT id FROM incidents")}


def _published(watcher: Watcher) -> set[str]:
    return {json.loads(p)["incident_id"] for p in watcher.on("edge_inspector/belt/defect")}


async def test_a_station_removed_from_the_config_is_withdrawn_from_discovery(
    tmp_path: Path,
    broker: Mosquitto,
) -> None:
    other = _station().model_copy(update={"id": "press", "name": "Press"})
    watcher = Watcher(broker.port, "homeassistant/device/#", client_id="discovery-watcher")
    for stations in ([_station(), other], [_station()]):  # the second start lacks "press"
        bridge = MqttBridge(
            MqttConfig(url=broker.url, node_id="n1"),
            stations,
            outbox_path=tmp_path / "outbox.sqlite3",
        )
        await bridge.start()
        assert await asyncio.to_thread(bridge.ready.wait, 10)
        await bridge.stop()
    press = "homeassistant/device/edge_inspector_n1_press/config"
    await asyncio.to_thread(watcher.wait, lambda: watcher.on(press)[-1:] == [b""])
    assert json.loads(watcher.on("homeassistant/device/edge_inspector_n1_belt/config")[-1])
    watcher.close()


def test_the_outbox_is_bounded_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [1000.0]
    outbox = Outbox(tmp_path / "o.sqlite3", max_messages=5, max_age_s=3600, clock=lambda: clock[0])
    for n in range(8):
        outbox.put_many([("t", f"{n}".encode(), None, False)])
    assert [m.payload for m in outbox.after(0, 100)] == [b"3", b"4", b"5", b"6", b"7"]
    assert "dropped the 1 oldest" in caplog.text
    clock[0] += 7200  # two hours later everything is past the age limit
    outbox.put_many([("t", b"new", "k1", False)])
    assert [m.payload for m in outbox.after(0, 100)] == [b"new"]
    assert len(outbox) == 1
    assert outbox.enqueued(["k1", "k2"]) == {"k1"}
    outbox.ack([m.seq for m in outbox.after(0, 100)])
    assert len(outbox) == 0
    outbox.close()


async def test_tls_listener_needs_the_brokers_certificate(
    tmp_path: Path, broker: Mosquitto
) -> None:
    trusted = MqttBridge(
        MqttConfig(node_id="tls_ok", discovery=False, ca_file=broker.cert),
        [_station()],
        url=f"mqtts://127.0.0.1:{broker.tls_port}",
        outbox_path=tmp_path / "a.sqlite3",
    )
    untrusted = MqttBridge(
        MqttConfig(node_id="tls_no", discovery=False),
        [_station()],
        url=f"mqtts://127.0.0.1:{broker.tls_port}",
        outbox_path=tmp_path / "b.sqlite3",
    )
    await trusted.start()
    await untrusted.start()
    try:
        assert await asyncio.to_thread(trusted.ready.wait, 10)
        assert not await asyncio.to_thread(untrusted.connected.wait, 2)
    finally:
        await trusted.stop()
        await untrusted.stop()


async def test_a_reused_message_id_does_not_count_as_the_brokers_acknowledgement(
    tmp_path: Path,
    broker: Mosquitto,
) -> None:
    # paho numbers messages 1..65535 and starts again. The broker's PUBACK for a state update
    # must never be taken for the acknowledgement of a later defect that got the same number.
    watcher = Watcher(broker.port, "edge_inspector/belt/defect", client_id="mid-watcher")
    bridge = MqttBridge(
        MqttConfig(url=broker.url, node_id="n1", discovery=False),
        [_station()],
        outbox_path=tmp_path / "outbox.sqlite3",
    )
    await bridge.start()
    assert await asyncio.to_thread(bridge.ready.wait, 10)
    state = StationState(
        station_id="belt",
        name="Belt",
        enabled=True,
        available=True,
        mode="continuous",
        updated_at=datetime.now(UTC),
    )
    client = bridge._client
    acknowledged: list[int] = []  # message ids whose PUBACK the bridge has been told of
    on_publish = bridge._on_publish

    def told(*args: Any) -> None:  # (client, userdata, mid, reason, properties)
        on_publish(*args)
        acknowledged.append(args[2])

    client.on_publish = told
    client._last_mid = 65000  # what some hours of state updates would have reached
    await bridge.on_station_state(state)  # QoS 1, id 65001, acknowledged at once
    await until(lambda: 65001 in acknowledged, "the broker acknowledged the state, id 65001")
    assert broker.process is not None
    broker.process.send_signal(signal.SIGSTOP)  # the broker hangs: nothing is acknowledged
    try:
        client._last_mid = 65000  # ...and the numbers come round again
        await bridge.on_incident(_incident(1))
        await until(lambda: client._last_mid == 65001, "the defect went out as id 65001")
        # The bridge sends a later defect only after it has looked for the first one's
        # acknowledgement: once that one is out too, a PUBACK taken for the wrong message
        # would have emptied the first one from the outbox.
        await bridge.on_incident(_incident(2))
        await until(lambda: client._last_mid == 65002, "the second defect went out")
        assert bridge.queued == 2, "a defect left the outbox without the broker's PUBACK"
    finally:
        broker.process.send_signal(signal.SIGCONT)
    await asyncio.to_thread(watcher.wait, lambda: bridge.queued == 0)
    await asyncio.to_thread(watcher.wait, lambda: _published(watcher) == {"inc-0001", "inc-0002"})
    await bridge.stop()
    watcher.close()


async def test_the_quality_figures_and_the_shift_report_are_kept_for_later_subscribers(
    tmp_path: Path, broker: Mosquitto
) -> None:
    from edge_inspector.events import Verdict
    from edge_inspector.quality import Shifts, quality_report
    from edge_inspector.store import Store
    from tests.engine.test_store import _inspection

    store = Store(tmp_path / "store")
    await store.open()
    now = datetime.now(UTC)
    for n, verdict in enumerate((Verdict.FAIL, Verdict.PASS, Verdict.PASS, Verdict.PASS)):
        moment = now - timedelta(seconds=1)
        await store.add_inspection(_inspection(n, verdict, moment, station="belt"))
    shifts = Shifts([], UTC)  # one shift a day, from midnight
    current = await quality_report(store, {"belt": "Belt"}, shifts.period("last hour"), now=now)
    ended = await quality_report(store, {"belt": "Belt"}, shifts.period("yesterday"), now=now)
    await store.close()

    broker.stop()  # the figures come while the broker is away: nothing is lost
    bridge = MqttBridge(
        MqttConfig(url=broker.url, node_id="n1", discovery=False),
        [_station()],
        outbox_path=tmp_path / "outbox.sqlite3",
    )
    await bridge.start()
    await bridge.on_quality(current)
    await bridge.on_shift_report(ended)
    broker.start()
    await asyncio.to_thread(bridge.connected.wait, 20)
    await until(lambda: bridge.queued == 0, "the shift report acknowledged by the broker")
    # a subscriber that comes later gets them: retained
    watcher = Watcher(
        broker.port,
        "edge_inspector/belt/kpi",
        "edge_inspector/quality",
        "edge_inspector/shift_report",
        client_id="kpi-watcher",
    )
    await asyncio.to_thread(
        watcher.wait,
        lambda: all(
            watcher.on(f"edge_inspector/{t}") for t in ("belt/kpi", "quality", "shift_report")
        ),
    )
    kpi = json.loads(watcher.on("edge_inspector/belt/kpi")[0])
    assert (kpi["inspections"], kpi["failed"], kpi["defect_rate_percent"]) == (4, 1, 25.0)
    assert json.loads(watcher.on("edge_inspector/quality")[0])["total"] == kpi | {
        "station_id": None,
        "name": "total",
    }
    [report] = watcher.on("edge_inspector/shift_report")
    assert json.loads(report)["period"] == "yesterday" and json.loads(report)["complete"]
    await bridge.stop()
    watcher.close()
