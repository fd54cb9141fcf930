"""Remote mode: the integration on an engine service (a real separate process) through its HTTP
API and websocket, with the same entities, events, services, Assist answers and card data as
in-process; unavailability while the service is down and catch-up when it is back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import Event, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import area_registry as ar
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.edge_inspector import answers
from custom_components.edge_inspector.const import DOMAIN, EVENT_DEFECT, EVENT_INCIDENT
from custom_components.edge_inspector.devices import device_by_identifier
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorFrame
from tests.ha_release import station_object_id
from tests.mosquitto import Mosquitto, Watcher
from tests.service import TOKEN, Service, free_port, running_service, service_config

from .test_integration import _until

# The engine's stations (tests/service.py) and their entity id prefixes on this release.
LINE_A = station_object_id("Line A", area="Line 1")
DOCK = station_object_id("Dock", area="Line 2")
DOCK_2 = station_object_id("Dock 2")  # added without a line


@pytest.fixture
def service(tmp_path: Path, socket_enabled: None) -> Iterator[Service]:
    with running_service(tmp_path, fps=2) as svc:
        yield svc


async def _remote_entry(
    hass: HomeAssistant, service: Service, token: str = TOKEN, **options: Any
) -> MockConfigEntry:
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Edge Inspector",
        data={
            "ollama_url": "",
            "ollama_model": "qwen2.5vl:7b",
            "storage": "",
            "engine_url": service.url,
            "engine_token": token,
        },
        options=options,
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id) is (token == TOKEN)
    await hass.async_block_till_done()
    return entry


def _device(hass: HomeAssistant, entry: MockConfigEntry, sid: str) -> str:
    device = device_by_identifier(hass, (DOMAIN, f"{entry.entry_id}_{sid}"), entry.entry_id)
    assert device is not None
    return device.id


async def test_the_config_flow_tests_the_engine_before_creating_the_entry(
    hass: HomeAssistant, service: Service
) -> None:
    from unittest.mock import patch

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": "user"})
    # without an engine URL on a Home Assistant that cannot run the engine (its OS): refused
    with patch("custom_components.edge_inspector.config_flow.engine_installed", return_value=False):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["errors"] == {"base": "engine_not_installed"}
    for url, token, error in (
        (service.url, "wrong-token-0123456789", "invalid_auth"),
        (f"http://127.0.0.1:{free_port()}", TOKEN, "engine_unreachable"),
    ):
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {"engine_url": url, "engine_token": token}
        )
        assert result["type"] is FlowResultType.FORM
        assert result["errors"] == {"engine_url": error}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"engine_url": service.url + "/", "engine_token": TOKEN}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"]["engine_url"] == service.url
    await hass.async_block_till_done()
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    assert entry.state is ConfigEntryState.LOADED
    # stations are the engine's: none are added in Home Assistant
    flow = await hass.config_entries.subentries.async_init(
        (entry.entry_id, "station"), context={"source": "user"}
    )
    assert flow["type"] is FlowResultType.ABORT and flow["reason"] == "remote_engine"
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_a_refused_token_asks_for_a_new_one_and_the_hub_loads_with_it(
    hass: HomeAssistant, service: Service
) -> None:
    entry = await _remote_entry(hass, service, token="an-old-token")
    # not retried for ever: Home Assistant asks for a new token (a repair to fix)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert "refused the token" in (entry.reason or "")
    flows = [
        f for f in hass.config_entries.flow.async_progress() if f["context"]["source"] == "reauth"
    ]
    assert len(flows) == 1
    flow_id = flows[0]["flow_id"]
    result = await hass.config_entries.flow.async_configure(flow_id, {"engine_token": "a-guess"})
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_auth"}
    result = await hass.config_entries.flow.async_configure(flow_id, {"engine_token": TOKEN})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reauth_successful"
    await hass.async_block_till_done()
    assert entry.data["engine_token"] == TOKEN
    assert entry.state is ConfigEntryState.LOADED
    await _until(hass, lambda: hass.states.get(f"sensor.{DOCK}_inspections") is not None)
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_a_token_changed_while_running_asks_for_the_new_one(
    hass: HomeAssistant, service: Service, tmp_path: Path
) -> None:
    entry = await _remote_entry(hass, service)
    assert entry.state is ConfigEntryState.LOADED
    # the service restarts with another token: the follower is refused, and Home Assistant
    # asks for the new token instead of retrying the old one for ever
    assert service.stop() == 0
    new_token = "a-new-token-0123456789"
    service.config.write_text(service_config(tmp_path / "store", service.port, token=new_token))
    service.token = new_token
    service.start()

    def reauth_flows() -> list[Any]:
        return [
            f
            for f in hass.config_entries.flow.async_progress()
            if f["context"]["source"] == "reauth"
        ]

    await _until(hass, lambda: len(reauth_flows()) == 1)
    assert entry.runtime_data.engine.token_refused
    result = await hass.config_entries.flow.async_configure(
        reauth_flows()[0]["flow_id"], {"engine_token": new_token}
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "reauth_successful"
    await hass.async_block_till_done()
    assert entry.data["engine_token"] == new_token
    assert entry.state is ConfigEntryState.LOADED
    await _until(hass, lambda: entry.runtime_data.engine.connected)
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_reconfiguring_a_hub_whose_engine_was_down_sets_it_up_at_once(
    hass: HomeAssistant, service: Service
) -> None:
    # the engine is down when Home Assistant starts: the hub waits to retry
    assert service.stop() == 0
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Edge Inspector",
        data={"ollama_url": "", "ollama_model": "qwen2.5vl:7b", "storage": ""}
        | {"engine_url": service.url, "engine_token": TOKEN},
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY
    # it is back; the user changes a setting: set up at once, no waiting for the next retry
    # (a hub that never loaded has no update listener to reload it)
    service.start()
    flow = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": "reconfigure", "entry_id": entry.entry_id}
    )
    saved = await hass.config_entries.flow.async_configure(
        flow["flow_id"],
        {"engine_url": service.url, "engine_token": TOKEN, "ollama_model": "qwen2.5vl:3b"},
    )
    assert saved["type"] is FlowResultType.ABORT and saved["reason"] == "reconfigure_successful"
    assert entry.data["ollama_model"] == "qwen2.5vl:3b"
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_remote_stations_have_the_same_entities_events_and_services(
    hass: HomeAssistant,
    service: Service,
    camera_file: Path,
    hass_ws_client: WebSocketGenerator,
) -> None:
    entry = await _remote_entry(hass, service, cameras="dock: camera.press_camera")
    line_a, dock = _device(hass, entry, "line_a"), _device(hass, entry, "dock")
    entities = {
        e.unique_id.removeprefix(f"{entry.entry_id}_{entry.entry_id}_dock_"): e.entity_id
        for e in er.async_entries_for_device(er.async_get(hass), dock)
    }
    assert entities["inspections"] == f"sensor.{DOCK}_inspections"
    assert entities["last_defect_image"] == f"image.{DOCK}_last_defect"
    device = dr.async_get(hass).async_get(line_a)
    assert device is not None and device.area_id is not None
    area = ar.async_get(hass).async_get_area(device.area_id)
    assert area is not None and area.name == "Line 1"  # the station's line is its area

    # the engine's own camera runs: line A's counter follows over the websocket
    # (unavailable until the hub follows the engine's events, just after set-up)
    await _until(
        hass,
        lambda: (
            hass.states.get(f"sensor.{LINE_A}_inspections").state.isdigit()
            and int(hass.states.get(f"sensor.{LINE_A}_inspections").state) > 0
        ),
    )
    assert hass.states.get(f"switch.{LINE_A}_inspection").state == "on"

    # the dock takes Home Assistant's camera: inspect now pushes its picture
    defects: list[Event] = []
    updates: list[Event] = []
    hass.bus.async_listen(EVENT_DEFECT, defects.append)
    hass.bus.async_listen(EVENT_INCIDENT, updates.append)
    response = await hass.services.async_call(
        DOMAIN,
        "inspect",
        {"device_id": dock, "part_id": "P-5"},
        blocking=True,
        return_response=True,
    )
    assert response is not None and response["verdict"] == "fail"
    await _until(hass, lambda: any(e.data["station_id"] == "dock" for e in defects))
    event = next(e for e in defects if e.data["station_id"] == "dock")
    assert event.data["device_id"] == dock and event.data["part_id"] == "P-5"
    assert event.data["camera_entity_id"] == "camera.press_camera"
    await _until(hass, lambda: hass.states.get(f"binary_sensor.{DOCK}_defect").state == "on")
    await _until(hass, lambda: hass.states.get(f"sensor.{DOCK}_incidents").state != "0")

    # the picture of the last defect comes from the engine
    image_entity = hass.data["image"].get_entity(f"image.{DOCK}_last_defect")
    await _until(hass, lambda: image_entity._incident_id is not None)
    picture = await image_entity.async_image()
    assert picture is not None and picture[:2] == b"\xff\xd8"

    # a verdict goes to the engine's store and comes back as an update
    incident_id = event.data["incident_id"]
    await hass.services.async_call(
        DOMAIN, "acknowledge", {"incident_id": incident_id, "state": "confirmed"}, blocking=True
    )
    status, body, _ = service.get(f"/api/incidents/{incident_id}")
    assert status == 200 and b'"state":"confirmed"' in body.replace(b" ", b"")
    await _until(hass, lambda: any(e.data["incident_id"] == incident_id for e in updates))

    # controls act on the engine
    await hass.services.async_call(
        "switch", "turn_off", {"entity_id": f"switch.{LINE_A}_inspection"}, blocking=True
    )
    assert b'"enabled":false' in service.get("/api/stations/line_a")[1].replace(b" ", b"")
    assert hass.states.get(f"switch.{LINE_A}_inspection").state == "off"
    await hass.services.async_call(
        "number",
        "set_value",
        {"entity_id": f"number.{DOCK}_confidence_threshold", "value": 0.6},
        blocking=True,
    )
    assert b'"dent":0.6' in service.get("/api/stations/dock")[1].replace(b" ", b"")

    # Assist and the card read the engine's store
    count = await answers.defect_count(hass, station="dock")
    assert count["total"] >= 1 and count["stations"][0]["inspections"] == 1
    status_answer = await answers.station_status(hass, station="line a")
    assert status_answer["speech"].startswith("Line A is switched off")
    client = await hass_ws_client(hass)
    await client.send_json_auto_id(
        {"type": "edge_inspector/station_overview", "station_id": "dock"}
    )
    reply = await client.receive_json()
    assert reply["success"], reply
    assert reply["result"]["today"]["failed"] == 1
    assert reply["result"]["last_incident"]["incident_id"] in response["new_incident_ids"]
    assert sum(p["failed"] for p in reply["result"]["series"]["points"]) == 1

    # a missed defect is recorded on the engine
    missed = await hass.services.async_call(
        DOMAIN,
        "report_missed_defect",
        {"device_id": dock, "defect_class": "crack"},
        blocking=True,
        return_response=True,
    )
    assert missed is not None
    assert service.get(f"/api/incidents/{missed['incident_id']}")[0] == 200
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_the_engine_going_away_makes_entities_unavailable_until_it_is_back(
    hass: HomeAssistant,
    service: Service,
    defect_scenes: list[ConveyorFrame],
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await _remote_entry(hass, service)
    await _until(hass, lambda: hass.states.get(f"sensor.{DOCK}_inspections").state == "0")
    defects: list[Event] = []
    hass.bus.async_listen(EVENT_DEFECT, defects.append)

    assert service.stop() == 0
    await _until(hass, lambda: hass.states.get(f"sensor.{DOCK}_inspections").state == "unavailable")
    assert hass.states.get(f"switch.{LINE_A}_inspection").state == "unavailable"
    engine = entry.runtime_data.engine
    tried = engine.connection_attempts
    await _until(hass, lambda: engine.connection_attempts >= tried + 2)  # it keeps retrying...
    assert caplog.text.count("unreachable") == 1  # ...and says so once

    # the engine comes back and finds a defect before Home Assistant reconnects
    service.start()
    ok, jpeg = cv2.imencode(".jpg", defect_scenes[3].image)
    assert ok
    status, body, _ = service.request(
        "POST", "/api/stations/dock/frames", raw=jpeg.tobytes(), content_type="image/jpeg"
    )
    assert status == 200, body
    await _until(hass, lambda: hass.states.get(f"sensor.{DOCK}_inspections").state != "unavailable")
    await _until(hass, lambda: any(e.data["station_id"] == "dock" for e in defects))
    assert "reachable again" in caplog.text
    assert hass.states.get(f"switch.{LINE_A}_inspection").state == "on"
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_the_engines_vlm_actions_run_home_assistant_services(
    hass: HomeAssistant, tmp_path: Path, socket_enabled: None, defect_scenes: list[ConveyorFrame]
) -> None:
    """A `service` action of the engine service's VLM is carried out by Home Assistant (over
    the websocket), as in-process: the conveyor's input_boolean goes off."""
    from homeassistant.setup import async_setup_component

    from tests.ollama_server import FakeOllama, Reply

    def model(body: dict[str, Any]) -> Reply:
        if body.get("format"):  # the classification (the tool loop has no schema)
            return Reply.json(
                {
                    "defect_type": "scratch",
                    "severity": "high",
                    "confidence": 0.9,
                    "description": "a scratch",
                }
            )
        answered = [m for m in body["messages"] if m.get("role") == "tool"]
        if not answered:
            return Reply.tools(("stop_line", {}))
        if len(answered) == 1:
            return Reply.tools(
                (
                    "write_incident_report",
                    {
                        "summary": "line stopped",
                        "probable_cause": "burr",
                        "fix_steps": ["Deburr the die"],
                    },
                )
            )
        return Reply(content="Done.")

    ollama = FakeOllama()
    ollama.script = model
    await ollama.start()
    port = free_port()
    config = tmp_path / "engine.yaml"
    config.write_text(
        service_config(
            tmp_path / "store",
            port,
            fps=1,
            dock_actions="[stop_line]",
            vlm=f"""vlm:
  host: {ollama.url}
  model: qwen2.5vl:7b
  retry_interval: 0.5
  actions:
    - name: stop_line
      description: Stop the conveyor
      target: {{type: service, service: input_boolean.turn_off,
                data: {{entity_id: input_boolean.conveyor}}}}
""",
        )
    )
    service = Service(config, port)
    service.start()
    try:
        assert await async_setup_component(
            hass, "input_boolean", {"input_boolean": {"conveyor": {"initial": True}}}
        )
        entry = await _remote_entry(hass, service)
        await _until(hass, lambda: hass.states.get(f"sensor.{DOCK}_inspections").state == "0")
        ok, jpeg = cv2.imencode(".jpg", defect_scenes[0].image)
        assert ok
        status, body, _ = service.request(
            "POST", "/api/stations/dock/frames", raw=jpeg.tobytes(), content_type="image/jpeg"
        )
        assert status == 200, body
        await _until(hass, lambda: hass.states.get("input_boolean.conveyor").state == "off")
        incident_id = json.loads(body)["new_incident_ids"][0]

        def record() -> dict[str, Any] | None:
            data = json.loads(service.get(f"/api/incidents/{incident_id}")[1])
            vlm = data.get("vlm") or {}
            return vlm if vlm.get("status") == "done" else None

        await _until(hass, record)
        actions = {a["tool"]: a for a in record()["actions"]}  # type: ignore[index]
        assert actions["stop_line"]["status"] == "executed"
        assert actions["stop_line"]["detail"] == "called input_boolean.turn_off"
        # the VLM's backlog comes over too (the camera goes on finding defects, so its figures
        # are whatever they are now): its status, and the station's sensors, fed by the states
        # the service pushes
        status = await entry.runtime_data.engine.vlm_status()
        assert status is not None and status.queue_depth is not None
        assert status.skipped is not None and status.coalesced is not None
        waiting = hass.states.get(f"sensor.{DOCK}_incidents_waiting_for_the_vlm")
        assert waiting is not None and waiting.state.isdigit(), waiting
        longest = hass.states.get(f"sensor.{DOCK}_longest_vlm_wait")
        assert longest is not None and float(longest.state) >= 0, longest
        assert await hass.config_entries.async_unload(entry.entry_id)
    finally:
        service.stop()
        await ollama.stop()


def test_the_integration_loads_without_a_model_runtime() -> None:
    """Home Assistant OS and its container cannot install PyTorch: with `cv2`, `ultralytics`,
    `torch` and `lap` unimportable, every module of the integration (and the remote client)
    still imports, and the in-process mode is refused with a clear reason."""
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    script = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"cv2", "ultralytics", "torch", "lap", "torchvision"}:
            raise ImportError("no " + name)
sys.meta_path.insert(0, Block())
import custom_components.edge_inspector
for module in ("hub", "config_flow", "answers", "llm_api", "intents", "websocket", "services",
               "sensor", "binary_sensor", "button", "event", "image", "number", "switch",
               "diagnostics", "device_trigger", "mqtt_publish"):
    __import__("custom_components.edge_inspector." + module)
from custom_components.edge_inspector.config_flow import engine_installed
from edge_inspector.api.client import RemoteEngine
assert not engine_installed()
print("light ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "light ok" in proc.stdout


async def test_stations_added_or_removed_on_the_engine_follow_after_a_restart(
    hass: HomeAssistant, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    entry = await _remote_entry(hass, service)

    def device(sid: str) -> dr.DeviceEntry | None:
        return device_by_identifier(hass, (DOMAIN, f"{entry.entry_id}_{sid}"), entry.entry_id)

    assert device("line_a") is not None and device("dock") is not None
    # the engine's file changes: line A goes, a second push station comes
    assert service.stop() == 0
    text = service.config.read_text()
    start = text.index("  - id: line_a")
    end = text.index("  - id: dock")
    text = text[:start] + text[end:]
    added = f"""  - id: dock_2
    name: Dock 2
    source: {{type: push}}
    mode: triggered
    model: {{path: {DEMO_MODEL}, imgsz: 320}}
    defects: {{scratch: 0.5}}
"""
    text = text.replace("stations:\n", "stations:\n" + added, 1)
    service.config.write_text(text)
    service.start()
    await _until(hass, lambda: device("dock_2") is not None, 90)
    await _until(hass, lambda: device("line_a") is None, 30)
    # available once the reloaded hub follows the engine's events again
    await _until(
        hass, lambda: getattr(hass.states.get(f"sensor.{DOCK_2}_inspections"), "state", None) == "0"
    )
    assert device("dock") is not None
    assert "reloading Edge Inspector" in caplog.text
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_an_engine_stations_plc_link_is_a_connectivity_sensor(
    hass: HomeAssistant, tmp_path: Path, socket_enabled: None
) -> None:
    from tests.plc_servers import ModbusPlc

    plc = ModbusPlc()
    await plc.start()
    link = (
        f"{{type: modbus, host: 127.0.0.1, port: {plc.port}, heartbeat_s: 0.2, "
        "outputs: {result: {register: 100}, heartbeat: {register: 104}}}"
    )
    try:
        with running_service(tmp_path, fps=2, dock_plc=link) as service:
            entry = await _remote_entry(hass, service)
            sensor = f"binary_sensor.{DOCK}_plc_link"
            await _until(hass, lambda: (s := hass.states.get(sensor)) and s.state == "on")
            assert hass.states.get(f"binary_sensor.{LINE_A}_plc_link") is None  # it has none
            await plc.stop()  # the PLC goes away: the sensor says so, with the reason
            await _until(hass, lambda: hass.states.get(sensor).state == "off")
            assert f"Modbus TCP 127.0.0.1:{plc.port}" in hass.states.get(sensor).attributes["error"]
            await plc.start()
            await _until(hass, lambda: hass.states.get(sensor).state == "on")
            assert await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await plc.stop()


async def test_the_same_kpi_from_home_assistant_the_http_api_and_mqtt(
    hass: HomeAssistant,
    *,
    tmp_path: Path,
    socket_enabled: None,
    broker: Mosquitto,
    defect_scenes: list[ConveyorFrame],
    clean_scene: ConveyorFrame,
) -> None:
    """One definition of each figure, in the engine: a Home Assistant sensor, `GET
    /api/quality` and the retained MQTT `kpi` show the same defect rate and yield for the same
    history."""
    extra = f"mqtt: {{url: '{broker.url}'}}\nquality: {{refresh_s: 0.2}}"
    with running_service(tmp_path, fps=1, extra=extra) as service:
        watcher = Watcher(broker.port, "edge_inspector/dock/kpi", client_id="kpi-watcher")
        entry = await _remote_entry(hass, service)
        pictures = [defect_scenes[0], clean_scene, clean_scene, defect_scenes[1], clean_scene]
        for scene in pictures:
            ok, jpeg = cv2.imencode(".jpg", scene.image)
            assert ok
            status, body, _ = service.request(
                "POST", "/api/stations/dock/frames", raw=jpeg.tobytes(), content_type="image/jpeg"
            )
            assert status == 200, body
        status, body, _ = service.get("/api/quality?station_id=dock&period=this%20shift")
        assert status == 200, body
        [http] = json.loads(body)["stations"]
        assert http["inspections"] == len(pictures) and http["failed"] >= 2

        def mqtt_kpi() -> dict[str, Any] | None:
            messages = watcher.on("edge_inspector/dock/kpi")
            return json.loads(messages[-1]) if messages else None

        coordinator = entry.runtime_data.coordinators["dock"]
        await _until(
            hass,
            lambda: (
                (quality := coordinator.data.quality) is not None
                and quality.inspections == len(pictures)
                and (kpi := mqtt_kpi()) is not None
                and kpi["inspections"] == len(pictures)
            ),
        )
        kpi = mqtt_kpi()
        assert kpi is not None
        for key, figure in (("defect_rate", "defect_rate_percent"), ("yield", "yield_percent")):
            sensor = float(hass.states.get(f"sensor.{DOCK}_{key}").state)
            assert sensor == http[figure] == kpi[figure], (key, sensor, http, kpi)
        assert http["defect_rate_percent"] == round(100 * http["failed"] / len(pictures), 2)
        # a new subscriber gets the figures at once: they are retained
        late = Watcher(broker.port, "edge_inspector/dock/kpi", client_id="late-watcher")
        late.wait(lambda: late.on("edge_inspector/dock/kpi"))
        assert json.loads(late.on("edge_inspector/dock/kpi")[-1])["inspections"] == len(pictures)
        late.close()
        watcher.close()
        assert await hass.config_entries.async_unload(entry.entry_id)
