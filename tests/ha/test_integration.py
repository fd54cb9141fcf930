"""The integration in a real Home Assistant core: set-up flows, a station fed by a real camera
entity (`local_file`), YOLO in Home Assistant's process, entities, bus events and services."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest
import voluptuous as vol
from homeassistant.config_entries import ConfigEntryState, ConfigSubentryData
from homeassistant.core import Event, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.edge_inspector.const import DOMAIN, EVENT_DEFECT
from custom_components.edge_inspector.devices import device_by_identifier
from edge_inspector import __version__
from edge_inspector.demo.synthetic import ConveyorFrame
from tests.ha_release import station_object_id

PRESS = station_object_id("Press", area="Line 2")  # its entities' id prefix


async def _until(hass: HomeAssistant, check: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for Home Assistant"
        await asyncio.sleep(0.1)
        await hass.async_block_till_done()


def _station(**changes: Any) -> ConfigSubentryData:
    data: dict[str, Any] = {
        "camera_entity_id": "camera.press_camera",
        "model_path": "demo",
        "defects": {"scratch": 0.3, "dent": 0.3, "crack": 0.3, "spot": 0.3},
        "interval": 0.3,
        "mode": "continuous",
        "imgsz": 320,
        "product": "steel bracket",
        "line": "Line 2",
    }
    data.update(changes)
    return ConfigSubentryData(
        data=data, subentry_type="station", title="Press", unique_id=data["camera_entity_id"]
    )


async def set_up_station(
    hass: HomeAssistant, tmp_path: Path, **station: Any
) -> tuple[MockConfigEntry, str]:
    """A loaded hub with one triggered station (or as `station` says); its device id."""
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={"storage": str(tmp_path / "store")},
        subentries_data=[_station(**({"interval": 3600, "mode": "triggered"} | station))],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    device = device_by_identifier(hass, (DOMAIN, next(iter(entry.subentries))), entry.entry_id)
    assert device is not None
    return entry, device.id


@pytest.fixture
async def loaded(hass: HomeAssistant, tmp_path: Path, camera_file: Path) -> MockConfigEntry:
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Edge Inspector",
        data={"ollama_url": "", "ollama_model": "qwen2.5vl:7b", "storage": str(tmp_path / "store")},
        subentries_data=[_station()],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


async def test_a_defect_reaches_entities_events_and_services(
    hass: HomeAssistant, loaded: MockConfigEntry, camera_file: Path
) -> None:
    assert loaded.state is ConfigEntryState.LOADED
    defects: list[Event] = []
    hass.bus.async_listen(EVENT_DEFECT, defects.append)
    await _until(hass, lambda: defects)

    # one device for the station, under its subentry
    subentry_id = next(iter(loaded.subentries))
    device = device_by_identifier(hass, (DOMAIN, subentry_id), loaded.entry_id)
    assert device is not None and device.name == "Press"
    device_id = device.id
    entities = {
        e.unique_id.removeprefix(f"{loaded.entry_id}_{subentry_id}_"): e.entity_id
        for e in er.async_entries_for_device(er.async_get(hass), device_id, True)
    }
    assert set(entities) == {
        "inspections",
        "defects",
        "incidents",
        "defect_rate",
        "yield",
        "last_defect_class",
        "last_verdict",
        "latency",
        "false_reject_rate",
        "false_accept_rate",
        "defect",
        "out_of_control",
        "defect_event",
        "last_defect_image",
        "inspection_enabled",
        "inspect_now",
        "confidence_threshold",
        *(f"incidents_by_class_{c}" for c in ("scratch", "dent", "crack", "spot")),
    }
    assert er.async_get(hass).async_get(entities["latency"]).disabled_by is not None

    await _until(hass, lambda: hass.states.get(entities["defect"]).state == "on")
    event = defects[0].data
    assert event["station"] == "Press" and event["camera_entity_id"] == "camera.press_camera"
    assert event["defect_class"] in ("scratch", "dent", "crack", "spot")
    assert int(hass.states.get(entities["inspections"]).state) >= 1
    # the engine's published figures: recomputed within `quality.refresh_s` of the defect
    await _until(hass, lambda: hass.states.get(entities["defect_rate"]).state != "unknown")
    rate = float(hass.states.get(entities["defect_rate"]).state)
    assert rate > 0 and float(hass.states.get(entities["yield"]).state) == round(100 - rate, 2)
    await _until(
        hass,
        lambda: (
            hass.states.get(entities["last_defect_class"]).state
            in {e.data["defect_class"] for e in defects}
        ),
    )
    fired = hass.states.get(entities["defect_event"])
    by_id = {e.data["incident_id"]: e.data["defect_class"] for e in defects}
    assert by_id[fired.attributes["incident_id"]] == fired.attributes["event_type"]
    assert hass.states.get(entities["last_defect_image"]).state != "unknown"
    assert float(hass.states.get(entities["confidence_threshold"]).state) == 0.3

    # services, with their answers
    result = await hass.services.async_call(
        DOMAIN,
        "inspect",
        {"device_id": device_id, "part_id": "P-9"},
        blocking=True,
        return_response=True,
    )
    assert result["verdict"] == "fail" and result["part_id"] == "P-9"
    listed = await hass.services.async_call(
        DOMAIN, "get_incidents", {"device_id": device_id}, blocking=True, return_response=True
    )
    assert event["incident_id"] in [i["incident_id"] for i in listed["incidents"]]
    acked = await hass.services.async_call(
        DOMAIN,
        "acknowledge",
        {"incident_id": event["incident_id"], "state": "rejected", "note": "glare"},
        blocking=True,
        return_response=True,
    )
    assert acked["state"] == "rejected" and acked["feedback"][0]["note"] == "glare"
    report = await hass.services.async_call(
        DOMAIN, "report", {}, blocking=True, return_response=True
    )
    assert report["stations"][0]["station"] == "Press"
    assert report["stations"][0]["inspections"] >= 1
    assert "Press:" in report["text"]

    # controls
    await hass.services.async_call(
        "number",
        "set_value",
        {"entity_id": entities["confidence_threshold"], "value": 0.8},
        blocking=True,
    )
    await _until(hass, lambda: hass.states.get(entities["confidence_threshold"]).state == "0.8")
    await hass.services.async_call(
        "switch", "turn_off", {"entity_id": entities["inspection_enabled"]}, blocking=True
    )
    await _until(hass, lambda: hass.states.get(entities["inspection_enabled"]).state == "off")

    assert await hass.config_entries.async_unload(loaded.entry_id)
    await hass.async_block_till_done()


async def test_a_camera_that_fails_makes_the_station_unavailable_until_it_is_back(
    hass: HomeAssistant,
    loaded: MockConfigEntry,
    camera_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sensor = f"binary_sensor.{PRESS}_defect"
    await _until(hass, lambda: hass.states.get(sensor).state == "on")
    hub = loaded.runtime_data
    grabs: list[str] = []
    grab = hub.cameras._grab

    async def counted(sid: str) -> None:
        grabs.append(sid)
        await grab(sid)

    hub.cameras._grab = counted  # type: ignore[method-assign]
    moved = camera_file.with_suffix(".bak")
    camera_file.rename(moved)
    await _until(hass, lambda: hass.states.get(sensor).state == "unavailable")
    failed = len(grabs)
    await _until(hass, lambda: len(grabs) >= failed + 3)  # several failed grabs...
    assert caplog.text.count("Press unavailable: camera camera.press_camera") == 1  # logged once
    moved.rename(camera_file)
    await _until(hass, lambda: hass.states.get(sensor).state == "on")
    assert "Press available again" in caplog.text
    assert await hass.config_entries.async_unload(loaded.entry_id)
    await hass.async_block_till_done()


async def test_unload_leaves_no_threads_or_listeners(
    hass: HomeAssistant, loaded: MockConfigEntry
) -> None:
    await _until(
        hass, lambda: hass.states.get(f"sensor.{PRESS}_inspections").state not in ("unknown", "0")
    )
    assert any(t.name.startswith("edge_inspector") for t in threading.enumerate())
    assert await hass.config_entries.async_unload(loaded.entry_id)
    await hass.async_block_till_done()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("edge_inspector")]
    assert hass.states.get(f"sensor.{PRESS}_inspections").state == "unavailable"
    assert await hass.config_entries.async_setup(loaded.entry_id)  # and it comes back
    await hass.async_block_till_done()
    await _until(
        hass, lambda: hass.states.get(f"sensor.{PRESS}_inspections").state not in ("unavailable",)
    )
    assert await hass.config_entries.async_unload(loaded.entry_id)
    await hass.async_block_till_done()


# -- set-up flows -------------------------------------------------------------------------------


async def test_the_hub_flow_creates_one_entry(hass: HomeAssistant, tmp_path: Path) -> None:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": "user"})
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "user"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"storage": str(tmp_path / "store")}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == {
        "ollama_url": "",
        "ollama_model": "qwen2.5vl:7b",
        "storage": str(tmp_path / "store"),
    }
    again = await hass.config_entries.flow.async_init(DOMAIN, context={"source": "user"})
    assert again["type"] is FlowResultType.ABORT
    assert again["reason"] in ("already_configured", "single_instance_allowed")
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    assert await hass.config_entries.async_unload(entry.entry_id)


async def test_the_station_flow_validates_and_creates_a_subentry(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path
) -> None:
    entry = MockConfigEntry(
        domain=DOMAIN, data={"storage": str(tmp_path / "store")}, unique_id=DOMAIN
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    flow = await hass.config_entries.subentries.async_init(
        (entry.entry_id, "station"), context={"source": "user"}
    )
    assert flow["type"] is FlowResultType.FORM
    base = {
        "name": "Press",
        "camera_entity_id": "camera.press_camera",
        "model_path": "demo",
        "defects": "scratch, dent",
        "threshold": 0.4,
        "interval": 1,
        "mode": "continuous",
        "imgsz": 320,
    }
    bad = await hass.config_entries.subentries.async_configure(
        flow["flow_id"], {**base, "model_path": str(tmp_path / "missing.pt"), "defects": " , "}
    )
    assert bad["errors"] == {"model_path": "model_missing", "defects": "invalid_classes"}
    done = await hass.config_entries.subentries.async_configure(flow["flow_id"], base)
    assert done["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    subentry = next(iter(entry.subentries.values()))
    assert subentry.data["defects"] == {"scratch": 0.4, "dent": 0.4}

    second = await hass.config_entries.subentries.async_init(
        (entry.entry_id, "station"), context={"source": "user"}
    )
    dup = await hass.config_entries.subentries.async_configure(
        second["flow_id"], {**base, "name": "Again"}
    )
    assert dup["errors"] == {"camera_entity_id": "camera_in_use"}
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


# -- what Home Assistant's own validation (hassfest) would check, as far as it runs here --------

COMPONENT = Path(__file__).parents[2] / "custom_components" / "edge_inspector"


def test_manifest_translations_and_services_are_consistent() -> None:
    import json

    import yaml

    manifest = json.loads((COMPONENT / "manifest.json").read_text())
    assert list(manifest)[:2] == ["domain", "name"]
    assert list(manifest)[2:] == sorted(list(manifest)[2:])  # hassfest's key order
    for key in (
        "documentation",
        "issue_tracker",
        "codeowners",
        "iot_class",
        "config_flow",
        "integration_type",
        "requirements",
        "version",
    ):
        assert key in manifest, key
    assert manifest["requirements"] == [f"edge-inspector=={__version__}"]
    hacs = json.loads((COMPONENT.parents[1] / "hacs.json").read_text())
    assert hacs["name"] == manifest["name"]
    strings = json.loads((COMPONENT / "strings.json").read_text())
    assert json.loads((COMPONENT / "translations" / "en.json").read_text()) == strings
    services = yaml.safe_load((COMPONENT / "services.yaml").read_text())
    icons = json.loads((COMPONENT / "icons.json").read_text())
    assert set(services) == set(strings["services"]) == set(icons["services"])
    for name, spec in services.items():
        assert set(spec["fields"]) == set(strings["services"][name]["fields"]), name
    # every entity translation key used in the code has a name and an icon
    keys = set()
    for platform in ("sensor", "binary_sensor", "button", "switch", "number", "event", "image"):
        text = (COMPONENT / f"{platform}.py").read_text()
        import re

        found = (
            set(re.findall(r'key="([a-z_]+)"', text))
            | set(re.findall(r'\(hub, coordinator, "([a-z_]+)"\)', text))
            | set(re.findall(r'_percent\(\s*"([a-z_]+)"', text))  # sensor.py's percentages
        )
        found |= {"defect_event"} if platform == "event" else set()
        found |= {"last_defect_image"} if platform == "image" else set()
        for key in found:
            assert "name" in strings["entity"][platform][key], (platform, key)
            assert key in icons["entity"][platform], (platform, key)
            keys.add(key)
    assert len(keys) == 21
    quality = yaml.safe_load((COMPONENT / "quality_scale.yaml").read_text())
    assert quality["rules"]["config-flow"] == "done"
    assert (COMPONENT / "brand" / "icon.png").read_bytes()[:4] == b"\x89PNG"


async def test_diagnostics_redact_hosts_paths_and_cameras(
    hass: HomeAssistant, loaded: MockConfigEntry
) -> None:
    import json

    from custom_components.edge_inspector.diagnostics import (
        async_get_config_entry_diagnostics,
    )

    await _until(hass, lambda: hass.states.get(f"binary_sensor.{PRESS}_defect").state == "on")
    diagnostics = await async_get_config_entry_diagnostics(hass, loaded)
    text = json.dumps(diagnostics)
    assert "camera.press_camera" not in text
    assert str(loaded.data["storage"]) not in text
    assert diagnostics["stations"]["Press"]["available"] is True
    assert diagnostics["stations"]["Press"]["state"]["inspections"] >= 1
    assert await hass.config_entries.async_unload(loaded.entry_id)
    await hass.async_block_till_done()


async def test_a_station_whose_model_is_missing_raises_a_repair_issue(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path
) -> None:
    from homeassistant.helpers import issue_registry as ir

    entry = MockConfigEntry(
        domain=DOMAIN,
        data={"storage": str(tmp_path / "store")},
        subentries_data=[_station(model_path=str(tmp_path / "gone.pt"))],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    subentry_id = next(iter(entry.subentries))
    issue = ir.async_get(hass).async_get_issue(DOMAIN, f"model_missing_{subentry_id}")
    assert issue is not None and issue.severity is ir.IssueSeverity.ERROR
    assert "gone.pt" in issue.translation_placeholders["error"]
    assert hass.states.get(f"binary_sensor.{PRESS}_defect").state == "unavailable"
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_class_counts_and_the_control_chart_entities(
    hass: HomeAssistant, loaded: MockConfigEntry
) -> None:
    await _until(hass, lambda: hass.states.get(f"binary_sensor.{PRESS}_defect").state == "on")
    counts = {
        c: hass.states.get(f"sensor.{PRESS}_{c}_incidents")
        for c in ("scratch", "dent", "crack", "spot")
    }
    assert all(state is not None for state in counts.values())
    hub = loaded.runtime_data
    coordinator = next(iter(hub.coordinators.values()))
    await _until(hass, lambda: sum(coordinator.data.class_counts.values()) >= 1)
    await _until(hass, lambda: coordinator.data.quality is not None)  # the engine's figures
    total = sum(int(hass.states.get(f"sensor.{PRESS}_{c}_incidents").state) for c in counts)
    assert total == sum(coordinator.data.class_counts.values()) >= 1
    # a few inspections of history: no verdict yet
    assert hass.states.get(f"binary_sensor.{PRESS}_process_out_of_control").state == "unknown"
    assert await hass.config_entries.async_unload(loaded.entry_id)
    await hass.async_block_till_done()


async def test_operator_verdicts_give_error_rates_and_a_dataset(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, defect_scenes: list[ConveyorFrame]
) -> None:
    import subprocess
    import sys

    entry, device_id = await set_up_station(hass, tmp_path)
    incidents: list[str] = []
    for scene in (defect_scenes[2], defect_scenes[3]):
        cv2.imwrite(str(camera_file), scene.image)
        result = await hass.services.async_call(
            DOMAIN, "inspect", {"device_id": device_id}, blocking=True, return_response=True
        )
        incidents.append(result["new_incident_ids"][0])
    store = entry.runtime_data.engine.store
    async with asyncio.timeout(10):
        while any([await store.incident(i) is None for i in incidents]):
            await asyncio.sleep(0.05)
    for ident, verdict in zip(incidents, ("confirmed", "rejected"), strict=True):
        await hass.services.async_call(
            DOMAIN, "acknowledge", {"incident_id": ident, "state": verdict}, blocking=True
        )
    await hass.services.async_call(
        DOMAIN,
        "report_missed_defect",
        {"device_id": device_id, "defect_class": "crack", "part_id": "P-77"},
        blocking=True,
    )
    # the engine recomputes its figures after the verdicts (within `quality.refresh_s`):
    # 1 of 2 flagged was good (false reject), 1 of 2 defective passed (false accept)
    rates = (f"sensor.{PRESS}_false_reject_rate", f"sensor.{PRESS}_false_accept_rate")
    await _until(hass, lambda: [hass.states.get(e).state for e in rates] == ["50.0", "50.0"])
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()

    out = tmp_path / "dataset"
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "edge_inspector.cli",
            "dataset",
            "export",
            "--store",
            str(tmp_path / "store"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 labelled frame(s)" in proc.stdout and "1 background frame(s)" in proc.stdout
    assert "a missed defect has no boxes" in proc.stderr
    positive = (out / "labels" / f"{incidents[0]}.txt").read_text().split()
    assert len(positive) % 5 == 0 and positive
    assert all(0 <= float(v) <= 1 for v in positive[1::5] + positive[2::5])
    assert (out / "labels" / f"{incidents[1]}.txt").read_text() == ""
    assert (out / "images" / f"{incidents[0]}.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert "names:" in (out / "data.yaml").read_text()


async def test_controls_images_and_service_errors(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path
) -> None:
    from homeassistant.components.image import DATA_COMPONENT
    from homeassistant.exceptions import ServiceValidationError

    entry, _ = await set_up_station(hass, tmp_path)
    image = hass.data[DATA_COMPONENT].get_entity(f"image.{PRESS}_last_defect")
    assert image is not None and await image.async_image() is None  # nothing yet
    await hass.services.async_call(
        "button", "press", {"entity_id": f"button.{PRESS}_inspect_now"}, blocking=True
    )
    await _until(hass, lambda: hass.states.get(f"image.{PRESS}_last_defect").state != "unknown")
    data = await image.async_image()
    assert data is not None and data[:2] == b"\xff\xd8"
    await hass.services.async_call(
        "switch", "turn_off", {"entity_id": f"switch.{PRESS}_inspection"}, blocking=True
    )
    with pytest.raises(HomeAssistantError, match="disabled"):
        await hass.services.async_call(
            "button", "press", {"entity_id": f"button.{PRESS}_inspect_now"}, blocking=True
        )
    await hass.services.async_call(
        "switch", "turn_on", {"entity_id": f"switch.{PRESS}_inspection"}, blocking=True
    )
    await _until(hass, lambda: hass.states.get(f"switch.{PRESS}_inspection").state == "on")
    with pytest.raises(ServiceValidationError):
        await hass.services.async_call(
            DOMAIN, "inspect", {"device_id": "no-such-device"}, blocking=True
        )
    with pytest.raises(ServiceValidationError):
        await hass.services.async_call(
            DOMAIN, "acknowledge", {"incident_id": "nope"}, blocking=True
        )
    with pytest.raises(ServiceValidationError):
        await hass.services.async_call(
            DOMAIN,
            "confirm_action",
            {"incident_id": "nope", "request_id": "x", "approve": True},
            blocking=True,
        )
    # strict types: no string or number read as a boolean, no string as a number
    for service, data in (
        ("confirm_action", {"incident_id": "i", "request_id": "x", "approve": "off"}),
        ("confirm_action", {"incident_id": "i", "request_id": "x", "approve": 1}),
        ("confirm_action", {"incident_id": "i" * 65, "request_id": "x", "approve": True}),
        ("get_incidents", {"limit": "5"}),
        ("get_incidents", {"limit": True}),
    ):
        with pytest.raises(vol.Invalid):
            await hass.services.async_call(
                DOMAIN, service, data, blocking=True, return_response=service == "get_incidents"
            )
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    with pytest.raises(ServiceValidationError):  # nothing loaded
        await hass.services.async_call(DOMAIN, "report", {}, blocking=True, return_response=True)


async def test_a_broken_station_configuration_fails_the_entry_clearly(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path
) -> None:
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={"storage": str(tmp_path / "store")},
        subentries_data=[_station(defects={})],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert "Invalid station configuration" in (entry.reason or "")


def _shape(value: Any) -> Any:
    """The structure of diagnostics with the values that change from run to run replaced."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    if isinstance(value, str):
        return value if value in ("**REDACTED**", "continuous", "triggered", "push") else "str"
    if isinstance(value, bool) or value is None:
        return value
    return type(value).__name__


async def test_entities_and_diagnostics_match_the_snapshots(
    hass: HomeAssistant, loaded: MockConfigEntry, snapshot: Any
) -> None:
    from custom_components.edge_inspector.diagnostics import (
        async_get_config_entry_diagnostics,
    )

    await _until(hass, lambda: hass.states.get(f"binary_sensor.{PRESS}_defect").state == "on")
    registry = er.async_get(hass)
    described = []
    for entry in sorted(
        er.async_entries_for_config_entry(registry, loaded.entry_id), key=lambda e: e.entity_id
    ):
        state = hass.states.get(entry.entity_id)
        attributes = state.attributes if state else {}
        described.append(
            {
                # the station's prefix differs by release (tests/entities.py), the rest not
                "entity_id": entry.entity_id.replace(f".{PRESS}_", ".STATION_"),
                "translation_key": entry.translation_key,
                "entity_category": entry.entity_category,
                "disabled_by": entry.disabled_by,
                "device_class": attributes.get("device_class"),
                "state_class": attributes.get("state_class"),
                "unit": attributes.get("unit_of_measurement"),
                "event_types": attributes.get("event_types"),
                "icon_translation": entry.original_icon,
            }
        )
    assert described == snapshot(name="entities")
    diagnostics = await async_get_config_entry_diagnostics(hass, loaded)
    assert _shape(diagnostics) == snapshot(name="diagnostics")
    assert await hass.config_entries.async_unload(loaded.entry_id)
    await hass.async_block_till_done()


async def test_removing_a_station_removes_its_device_and_entities(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path
) -> None:
    entry, device_id = await set_up_station(hass, tmp_path)
    subentry_id = next(iter(entry.subentries))
    assert er.async_entries_for_device(er.async_get(hass), device_id)
    assert hass.config_entries.async_remove_subentry(entry, subentry_id)
    await hass.async_block_till_done()
    assert dr.async_get(hass).async_get(device_id) is None
    assert not er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
    assert entry.state is ConfigEntryState.LOADED  # reloaded without the station
    assert entry.runtime_data.stations == {}
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_a_camera_sending_garbage_goes_unavailable_and_recovers_with_time_travel(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import timedelta

    from homeassistant.util import dt as dt_util
    from pytest_homeassistant_custom_component.common import async_fire_time_changed

    good = camera_file.read_bytes()
    entry, _ = await set_up_station(hass, tmp_path, interval=600, mode="continuous")
    sensor = f"binary_sensor.{PRESS}_defect"
    now = dt_util.utcnow()
    health = entry.runtime_data.cameras.health[next(iter(entry.runtime_data.stations))]

    async def tick(minutes: int) -> None:
        async_fire_time_changed(hass, now + timedelta(minutes=minutes))
        await hass.async_block_till_done()
        await _until(hass, lambda: not health.grabbing)  # the grab (YOLO on its thread) ended

    await tick(11)
    await _until(hass, lambda: hass.states.get(sensor).state == "on")
    camera_file.write_bytes(b"\xff\xd8 not really a JPEG")
    await tick(21)
    await _until(hass, lambda: hass.states.get(sensor).state == "unavailable")
    await tick(31)
    assert caplog.text.count("Press unavailable") == 1  # logged once, not on every grab
    camera_file.write_bytes(good)
    await tick(41)
    await _until(hass, lambda: hass.states.get(sensor).state == "on")
    assert "Press available again" in caplog.text
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_an_engine_error_makes_the_station_unavailable_until_the_model_runs_again(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import timedelta

    from homeassistant.util import dt as dt_util
    from pytest_homeassistant_custom_component.common import async_fire_time_changed

    entry, _ = await set_up_station(hass, tmp_path, interval=600, mode="continuous")
    hub = entry.runtime_data
    detector = next(iter(hub.engine.stations.values()))._inference.detector
    working = detector._predict
    sensor = f"sensor.{PRESS}_inspections"
    now = dt_util.utcnow()

    health = hub.cameras.health[next(iter(hub.stations))]

    async def tick(minutes: int) -> None:
        async_fire_time_changed(hass, now + timedelta(minutes=minutes))
        await hass.async_block_till_done()
        await _until(hass, lambda: not health.grabbing)  # the grab (YOLO on its thread) ended

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    detector._predict = broken
    await tick(11)
    await _until(hass, lambda: hass.states.get(sensor).state == "unavailable")
    await tick(21)
    assert caplog.text.count("Press unavailable: the engine failed") == 1
    detector._predict = working
    await tick(31)
    await _until(hass, lambda: hass.states.get(sensor).state not in ("unavailable", "unknown"))
    assert "Press available again: the engine runs" in caplog.text
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
