"""A real Home Assistant core with its own MQTT integration discovers a running engine.

The engine runs as its own process (as it would beside the cameras) and publishes to a real
Mosquitto; Home Assistant's `mqtt` integration connects to the same broker, and the station
must appear as a device with its entities, in their right states, and follow commands.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.edge_inspector.devices import device_by_identifier
from edge_inspector.demo.synthetic import ConveyorFrame
from tests.ha_release import mqtt_entry_id
from tests.mosquitto import Mosquitto


@pytest.fixture
def broker(tmp_path: Path, socket_enabled: None) -> Iterator[Mosquitto]:
    # Home Assistant's test plugin blocks sockets; this test talks to a real broker on loopback.
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


async def _until(hass: HomeAssistant, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for Home Assistant"
        await asyncio.sleep(0.2)
        await hass.async_block_till_done()


async def _mqtt_with_discovery(
    hass: HomeAssistant, tmp_path: Path, broker: Mosquitto
) -> MockConfigEntry:
    """Home Assistant's MQTT integration on the broker, discovery on."""
    # MQTT reads configuration.yaml for YAML-defined items; give it an empty one of our own.
    hass.config.config_dir = str(tmp_path)
    (tmp_path / "configuration.yaml").write_text("")
    entry = MockConfigEntry(
        domain="mqtt",
        data={"broker": "127.0.0.1", "port": broker.port},
        options={"discovery": True},
        version=1,
        minor_version=2,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


async def test_home_assistant_discovers_the_station_and_controls_it(
    hass: HomeAssistant,
    tmp_path: Path,
    broker: Mosquitto,
    demo_model: Path,
    defect_scenes: list[ConveyorFrame],
) -> None:
    entry = await _mqtt_with_discovery(hass, tmp_path, broker)

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, scene in enumerate(defect_scenes[:6]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene.image)
    config = tmp_path / "engine.yaml"
    config.write_text(f"""
stations:
  - id: belt
    name: Belt
    source: {{type: folder, path: {folder}, loop: true}}
    model: {{path: {demo_model}, imgsz: 320}}
    defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
    fps: 4
    tracking: {{enabled: false}}
    debounce: {{n: 1, m: 3}}
store: {{path: {tmp_path / "store"}}}
mqtt: {{node_id: line2}}
""")
    engine = subprocess.Popen(  # noqa: ASYNC220  (the engine is a separate program here)
        [
            sys.executable,
            "-m",
            "edge_inspector.cli",
            "run",
            "-c",
            str(config),
            "--mqtt",
            broker.url,
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stderr=subprocess.DEVNULL,
    )
    try:
        await _until(
            hass,
            lambda: (
                (s := hass.states.get("sensor.belt_defects")) is not None
                and s.state not in ("unknown", "unavailable", "0")
            ),
        )
        device = device_by_identifier(
            hass, ("mqtt", "edge_inspector_line2_belt"), mqtt_entry_id(hass)
        )
        assert device is not None
        assert (device.name, device.manufacturer) == ("Belt", "Edge Inspector")
        registry = er.async_get(hass)

        def entities() -> set[str]:
            return {e.entity_id for e in er.async_entries_for_device(registry, device.id)}

        # discovery registers the components one by one: wait for the last of them
        await _until(hass, lambda: len(entities()) >= 16)
        assert entities() == {
            "sensor.belt_inspections",
            "sensor.belt_defects",
            "sensor.belt_defect_rate",
            "sensor.belt_yield",
            "sensor.belt_false_reject_rate",
            "sensor.belt_false_accept_rate",
            "binary_sensor.belt_out_of_control",
            "sensor.belt_last_defect_class",
            "sensor.belt_last_verdict",
            "sensor.belt_latency",
            "binary_sensor.belt_defect",
            "event.belt_defect_event",
            "image.belt_last_defect_image",
            "switch.belt_inspection_enabled",
            "button.belt_inspect_now",
            "number.belt_confidence_threshold",
        }
        assert int(hass.states.get("sensor.belt_inspections").state) > 0
        # the quality figures come from the engine's retained `kpi` (this shift)
        await _until(
            hass,
            lambda: (
                hass.states.get("sensor.belt_defect_rate").state not in ("unknown", "unavailable")
            ),
        )
        rate = float(hass.states.get("sensor.belt_defect_rate").state)
        assert float(hass.states.get("sensor.belt_yield").state) == round(100 - rate, 2)
        assert hass.states.get("sensor.belt_false_reject_rate").state == "unknown"  # no verdicts
        assert hass.states.get("binary_sensor.belt_out_of_control").state == "off"  # no limits yet
        assert hass.states.get("sensor.belt_last_defect_class").state in {
            "scratch",
            "dent",
            "crack",
            "spot",
        }
        assert hass.states.get("switch.belt_inspection_enabled").state == "on"
        assert float(hass.states.get("number.belt_confidence_threshold").state) == 0.4
        event = hass.states.get("event.belt_defect_event")
        assert event.attributes["event_types"] == ["crack", "dent", "scratch", "spot"]
        await _until(
            hass,
            lambda: (
                hass.states.get("event.belt_defect_event").attributes.get("incident_id") is not None
            ),
        )
        assert (
            hass.states.get("event.belt_defect_event").attributes["event_type"]
            in event.attributes["event_types"]
        )

        # Commands from Home Assistant reach the engine and come back as state.
        await hass.services.async_call(
            "number",
            "set_value",
            {"entity_id": "number.belt_confidence_threshold", "value": 0.7},
            blocking=True,
        )
        await _until(
            hass, lambda: hass.states.get("number.belt_confidence_threshold").state == "0.7"
        )
        await hass.services.async_call(
            "switch", "turn_off", {"entity_id": "switch.belt_inspection_enabled"}, blocking=True
        )
        await _until(hass, lambda: hass.states.get("switch.belt_inspection_enabled").state == "off")
    finally:
        engine.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(engine.wait, 30) == 0
    # The engine said goodbye: every entity of the station goes unavailable.
    await _until(
        hass, lambda: hass.states.get("sensor.belt_inspections").state == "unavailable", 30
    )
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_the_integration_publishes_through_home_assistants_mqtt(
    hass: HomeAssistant,
    tmp_path: Path,
    broker: Mosquitto,
    camera_file: Path,
) -> None:
    """The in-process engine's events reach the broker through HA's own MQTT client, under the
    standalone engine's topics, so the same Node-RED flows work in both modes."""
    import json

    import jsonschema

    from tests.ha.test_integration import _station
    from tests.mosquitto import Watcher

    hass.config.config_dir = str(tmp_path)
    (tmp_path / "configuration.yaml").write_text("")
    mqtt_entry = MockConfigEntry(
        domain="mqtt",
        data={"broker": "127.0.0.1", "port": broker.port},
        options={"discovery": False},
        version=1,
        minor_version=2,
    )
    mqtt_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(mqtt_entry.entry_id)
    await hass.async_block_till_done()
    watcher = Watcher(broker.port, "plant_a/#", client_id="node_red")
    entry = MockConfigEntry(
        domain="edge_inspector",
        data={"storage": str(tmp_path / "store")},
        options={"mqtt_publish": True, "mqtt_base_topic": "plant_a"},
        subentries_data=[_station(interval=3600, mode="triggered")],
        unique_id="edge_inspector",
    )
    entry.add_to_hass(hass)
    try:
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        device = device_by_identifier(
            hass, ("edge_inspector", next(iter(entry.subentries))), entry.entry_id
        )
        assert device is not None
        await hass.services.async_call(
            "edge_inspector", "inspect", {"device_id": device.id}, blocking=True
        )
        sid = next(iter(entry.runtime_data.stations))
        await _until(hass, lambda: watcher.on(f"plant_a/{sid}/defect"))
        await _until(hass, lambda: watcher.on(f"plant_a/{sid}/state"))
        # the engine's quality figures too, once recomputed after the inspection
        await _until(
            hass,
            lambda: any(
                json.loads(m)["inspections"] >= 1 for m in watcher.on(f"plant_a/{sid}/kpi")
            ),
        )
        assert watcher.on("plant_a/quality")
    finally:
        assert await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
        watcher.close()
    schema = json.loads(
        (
            Path(__file__).parents[2] / "edge_inspector" / "schema" / "incident.schema.json"
        ).read_text()
    )
    defect = json.loads(watcher.on(f"plant_a/{sid}/defect")[0])
    jsonschema.validate(defect, schema)
    assert defect["station_name"] == "Press"
    state = json.loads(watcher.on(f"plant_a/{sid}/state")[-1])
    assert state["inspections"] >= 1


async def test_two_engines_on_one_broker_stay_apart(
    hass: HomeAssistant,
    tmp_path: Path,
    broker: Mosquitto,
    demo_model: Path,
    defect_scenes: list[ConveyorFrame],
) -> None:
    """Two engines (two lines) on one broker and one Home Assistant, each with a station of the
    same id and name: two devices, each with its own entities and availability; stopping one
    engine leaves the other's entities available and updating."""
    entry = await _mqtt_with_discovery(hass, tmp_path, broker)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, scene in enumerate(defect_scenes[:4]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene.image)

    def start(node: str) -> subprocess.Popen[bytes]:
        config = tmp_path / f"{node}.yaml"
        config.write_text(f"""
stations:
  - id: belt
    name: Belt
    source: {{type: folder, path: {folder}, loop: true}}
    model: {{path: {demo_model}, imgsz: 320}}
    defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
    fps: 3
store: {{path: {tmp_path / node}}}
mqtt: {{node_id: {node}, base_topic: edge_inspector/{node}}}
http: {{enabled: false}}
""")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_inspector.cli",
                "run",
                "-c",
                str(config),
                "--mqtt",
                broker.url,
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stderr=subprocess.DEVNULL,
        )

    engines = {node: start(node) for node in ("line1", "line2")}
    registry = er.async_get(hass)
    try:

        def inspections(node: str) -> str | None:
            device = device_by_identifier(
                hass, ("mqtt", f"edge_inspector_{node}_belt"), mqtt_entry_id(hass)
            )
            if device is None:
                return None
            for e in er.async_entries_for_device(registry, device.id):
                if e.entity_id.startswith("sensor.") and e.unique_id.endswith("_inspections"):
                    state = hass.states.get(e.entity_id)
                    return None if state is None else state.state
            return None

        for node in engines:
            await _until(hass, lambda n=node: inspections(n) not in (None, "unknown", "0"))
        line1 = device_by_identifier(
            hass, ("mqtt", "edge_inspector_line1_belt"), mqtt_entry_id(hass)
        )
        line2 = device_by_identifier(
            hass, ("mqtt", "edge_inspector_line2_belt"), mqtt_entry_id(hass)
        )
        assert line1 is not None and line2 is not None and line1.id != line2.id
        ids1 = {e.entity_id for e in er.async_entries_for_device(registry, line1.id)}
        ids2 = {e.entity_id for e in er.async_entries_for_device(registry, line2.id)}
        assert ids1 and ids2 and not ids1 & ids2  # same station id and name, no collision

        engines["line1"].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(engines["line1"].wait, 30) == 0
        await _until(hass, lambda: inspections("line1") == "unavailable", 30)
        before = int(inspections("line2") or 0)
        await _until(hass, lambda: int(inspections("line2") or 0) > before, 30)  # still going
        assert all(hass.states.get(e).state != "unavailable" for e in ids2)
        assert all(hass.states.get(e).state == "unavailable" for e in ids1)
    finally:
        for proc in engines.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 30)
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
