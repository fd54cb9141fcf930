"""The model's second opinion in Home Assistant: its verdict on the detector's call in the bus
events, on the defect event entity and in the station's "last model verdict" sensor; a defect
held back for the model, told with its verdict, fires the event entity once; and a station
discovered over MQTT shows the verdict too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from homeassistant.core import Event, HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.edge_inspector.const import DOMAIN, EVENT_DEFECT, EVENT_INCIDENT
from custom_components.edge_inspector.devices import device_by_identifier
from edge_inspector.events import (
    BoundingBox,
    Classification,
    Detection,
    Incident,
    ModelInfo,
    Severity,
    StationState,
    VlmResult,
    VlmStatus,
    VlmVerdict,
)
from tests.ha.test_integration import _station, _until, set_up_station
from tests.ha.test_mqtt_discovery import _mqtt_with_discovery
from tests.ha_release import station_object_id
from tests.mosquitto import Mosquitto
from tests.ollama_server import FakeOllama, Reply

PRESS = station_object_id("Press", area="Line 2")  # its entities' id prefix
VERDICT = f"sensor.{PRESS}_last_model_verdict"
DEFECT_EVENT = f"event.{PRESS}_defect"


@pytest.fixture
def broker(tmp_path: Path, socket_enabled: None) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


async def test_the_models_verdict_reaches_the_bus_the_defect_event_and_a_sensor(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, ollama: FakeOllama
) -> None:
    def no_defect(body: dict[str, Any]) -> Reply:
        if not body.get("format"):  # the tool loop: nothing to do
            return Reply(content="Nothing to do.")
        return Reply.json(
            {
                "defect_type": "no_defect",
                "severity": "low",
                "confidence": 0.9,
                "description": "a reflection, not a defect",
            }
        )

    ollama.script = no_defect
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={"ollama_url": ollama.url, "storage": str(tmp_path / "store")},
        options={"request_timeout": 5, "retry_interval": 0.5},
        subentries_data=[_station(interval=3600, mode="triggered")],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    defects: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    hass.bus.async_listen(EVENT_DEFECT, lambda e: defects.append(e.data))
    hass.bus.async_listen(EVENT_INCIDENT, lambda e: updates.append(e.data))
    device = device_by_identifier(hass, (DOMAIN, next(iter(entry.subentries))), entry.entry_id)
    assert device is not None
    assert hass.states.get(VERDICT).state == "unknown"  # nothing judged yet

    result = await hass.services.async_call(
        DOMAIN, "inspect", {"device_id": device.id}, blocking=True, return_response=True
    )
    ident = result["new_incident_ids"][0]
    await _until(hass, lambda: any(u["vlm_verdict"] for u in updates))
    [defect] = defects  # at once, before the model (no hold): no verdict yet
    assert defect["incident_id"] == ident
    assert (defect["vlm_status"], defect["vlm_verdict"]) == ("pending", None)
    [update] = [u for u in updates if u["vlm_verdict"]]
    assert (update["incident_id"], update["vlm_verdict"]) == (ident, "disputed")
    assert update["vlm_classification"]["defect_type"] == "no_defect"
    assert update["state"] == "open"  # disputed: still for a person to close
    await _until(hass, lambda: hass.states.get(VERDICT).state == "disputed")
    assert hass.states.get(VERDICT).attributes["options"] == [str(v) for v in VlmVerdict]
    fired = hass.states.get(DEFECT_EVENT)
    assert (fired.attributes["incident_id"], fired.attributes["vlm_verdict"]) == (
        ident,
        "disputed",
    )
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


def _incident(station_id: str, vlm: VlmResult) -> Incident:
    box = BoundingBox(x1=10, y1=10, x2=40, y2=40)
    now = datetime.now(UTC)
    return Incident(
        incident_id=f"held-{vlm.status}-{vlm.verdict}",
        station_id=station_id,
        station_name="Press",
        created_at=now,
        inspection_id="i-1",
        defect_class="scratch",
        confidence=0.7,
        boxes=(box,),
        detections=(
            Detection(class_name="scratch", class_id=0, confidence=0.7, box=box, defect=True),
        ),
        model=ModelInfo(name="demo-defects.pt", sha256="0" * 64),
        latency_ms=40,
        vlm=vlm,
    )


def _vlm(status: VlmStatus, verdict: VlmVerdict, said: str | None = None) -> VlmResult:
    classification = (
        Classification(defect_type=said, severity=Severity.LOW, confidence=0.6, description="")
        if said
        else None
    )
    return VlmResult(
        status=status,
        prompt_version="p",
        classification=classification,
        verdict=verdict,
        updated_at=datetime.now(UTC),
    )


async def test_a_held_defect_told_with_its_verdict_fires_the_event_entity_once(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path
) -> None:
    entry, _ = await set_up_station(hass, tmp_path)
    hub = entry.runtime_data
    station_id = next(iter(hub.stations))
    changes: list[Event] = []
    hass.bus.async_listen(
        "state_changed",
        lambda e: changes.append(e) if e.data["entity_id"] == DEFECT_EVENT else None,
    )
    defects: list[dict[str, Any]] = []
    hass.bus.async_listen(EVENT_DEFECT, lambda e: defects.append(e.data))

    # held until the model answered: the defect and the update carry the same verdict
    answered = _incident(station_id, _vlm(VlmStatus.DONE, VlmVerdict.RECLASSIFIED, "dent"))
    await hub.events.on_incident(answered)
    await hub.events.on_incident_update(answered)
    await hass.async_block_till_done()
    assert len(changes) == 1, "one defect, one event"
    assert hass.states.get(DEFECT_EVENT).attributes["vlm_verdict"] == "reclassified"
    assert defects[-1]["vlm_verdict"] == "reclassified"
    assert hass.states.get(VERDICT).state == "reclassified"

    # released unconfirmed after the wait: the model's later answer fires it once more
    waited = _incident(station_id, _vlm(VlmStatus.PENDING, VlmVerdict.UNCONFIRMED))
    await hub.events.on_incident(waited)
    assert hass.states.get(VERDICT).state == "unconfirmed"
    later = waited.model_copy(update={"vlm": _vlm(VlmStatus.DONE, VlmVerdict.CONFIRMED, "scratch")})
    await hub.events.on_incident_update(later)
    await hub.events.on_incident_update(later)  # a later update (an acknowledgement) does not
    await hass.async_block_till_done()
    assert len(changes) == 3
    assert hass.states.get(DEFECT_EVENT).attributes["vlm_verdict"] == "confirmed"
    assert hass.states.get(VERDICT).state == "confirmed"
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_a_station_discovered_over_mqtt_shows_the_models_verdict(
    hass: HomeAssistant, tmp_path: Path, broker: Mosquitto
) -> None:
    from edge_inspector.config import MqttConfig, StationConfig
    from edge_inspector.mqtt import MqttBridge

    await _mqtt_with_discovery(hass, tmp_path, broker)
    station = StationConfig.model_validate(
        {
            "id": "belt",
            "name": "Belt",
            "source": {"type": "push"},
            "model": {"path": "m.pt"},
            "defects": {"scratch": 0.5, "dent": 0.5},
        }
    )
    bridge = MqttBridge(
        MqttConfig(url=broker.url, node_id="line2"),
        [station],
        outbox_path=tmp_path / "outbox.sqlite3",
    )
    await bridge.start()
    try:
        await bridge.on_station_state(
            StationState(
                station_id="belt",
                name="Belt",
                enabled=True,
                available=True,
                mode="continuous",
                updated_at=datetime.now(UTC),
            )
        )
        shown = ("sensor.belt_last_verdict", "event.belt_defect_event")
        await _until(
            hass,
            lambda: all(
                (state := hass.states.get(e)) is not None and state.state != "unavailable"
                for e in shown
            ),
        )
        defect = _incident("belt", _vlm(VlmStatus.DONE, VlmVerdict.DISPUTED, "no_defect"))
        await bridge.on_incident(defect)  # as a station that held it back tells it
        await _until(
            hass,
            lambda: (
                hass.states.get("event.belt_defect_event").attributes.get("vlm_verdict")
                == "disputed"
            ),
        )
        await bridge.on_incident_update(defect)
        await _until(hass, lambda: hass.states.get("sensor.belt_last_verdict").state == "disputed")
        assert hass.states.get("sensor.belt_last_verdict").attributes["device_class"] == "enum"
        pending = _incident(
            "belt",
            VlmResult(status=VlmStatus.PENDING, prompt_version="p", updated_at=datetime.now(UTC)),
        )
        await bridge.on_incident_update(pending)  # an update with no verdict: unknown
        await _until(hass, lambda: hass.states.get("sensor.belt_last_verdict").state == "unknown")
    finally:
        await bridge.stop()
