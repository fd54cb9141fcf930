"""The dashboard side: the card's websocket commands, the card served by the integration and
loaded by the frontend, the shipped dashboards, and the notification blueprint."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from homeassistant.core import HomeAssistant, ServiceCall
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_mock_service
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    WebSocketGenerator,
)
from yarl import URL

from custom_components.edge_inspector.const import DOMAIN
from tests.ha_release import station_object_id
from tests.ollama_server import FakeOllama, agent_script

from .test_integration import _station, _until, set_up_station

PRESS = station_object_id("Press", area="Line 2")  # its entities' id prefix

ROOT = Path(__file__).parents[2]
CARD_URL = "/edge_inspector_frontend/edge-inspector-card.js"


class _Loader(yaml.SafeLoader):
    """YAML with Home Assistant's `!input` tags kept as strings (for reading blueprints)."""


_Loader.add_constructor("!input", lambda loader, node: f"!input {node.value}")


@pytest.fixture
async def ollama(socket_enabled: None) -> AsyncIterator[FakeOllama]:
    server = FakeOllama()
    server.script = agent_script()
    await server.start()
    yield server
    await server.stop()


async def test_the_card_gets_a_station_overview_over_the_websocket(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, hass_ws_client: WebSocketGenerator
) -> None:
    entry, device_id = await set_up_station(hass, tmp_path)
    sid = next(iter(entry.runtime_data.stations))
    client = await hass_ws_client(hass)

    await client.send_json_auto_id({"type": "edge_inspector/stations"})
    reply = await client.receive_json()
    assert reply["success"], reply
    (station,) = reply["result"]["stations"]
    assert station["station_id"] == sid and station["name"] == "Press"
    assert station["line"] == "Line 2" and station["device_id"] == device_id
    assert station["entities"]["image.last_defect_image"] == f"image.{PRESS}_last_defect"
    assert station["defect_classes"] == ["crack", "dent", "scratch", "spot"]

    async def overview(**extra: Any) -> dict[str, Any]:
        await client.send_json_auto_id(
            {"type": "edge_inspector/station_overview", "station_id": sid, **extra}
        )
        reply = await client.receive_json()
        assert reply["success"], reply
        result: dict[str, Any] = reply["result"]
        return result

    empty = await overview(hours=2, bucket_minutes=30)
    assert empty["today"] == {
        "inspections": 0,
        "failed": 0,
        "defect_rate_percent": None,
        "yield_percent": None,
        "by_class": {},
    }
    assert len(empty["series"]["points"]) == 5  # 2 h in 30 min buckets, the current one too
    assert empty["last_incident"] is None and empty["running"] is True

    await hass.services.async_call(
        DOMAIN, "inspect", {"device_id": device_id, "part_id": "P-1"}, blocking=True
    )
    await _until(hass, lambda: entry.runtime_data.coordinators[sid].data.last_result is not None)
    seen = await overview()
    assert seen["today"]["inspections"] == 1 and seen["today"]["failed"] == 1
    assert seen["today"]["defect_rate_percent"] == 100.0
    assert seen["today"]["yield_percent"] == 0.0
    assert sum(p["inspections"] for p in seen["series"]["points"]) == 1
    assert seen["series"]["points"][-1]["rate"] == 1.0
    last = seen["last_incident"]
    assert last["part_id"] == "P-1" and last["state"] == "open"
    assert last["defect_class"] in station["defect_classes"]
    assert "No report" in last["speech"]  # no VLM configured

    await client.send_json_auto_id(
        {"type": "edge_inspector/station_overview", "station_id": "nope"}
    )
    reply = await client.receive_json()
    assert not reply["success"] and reply["error"]["code"] == "not_found"
    await client.send_json_auto_id(
        {"type": "edge_inspector/station_overview", "station_id": sid, "hours": -1}
    )
    reply = await client.receive_json()
    assert not reply["success"] and reply["error"]["code"] == "invalid_format"


async def test_the_card_is_served_and_loaded_into_the_frontend(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, hass_client: ClientSessionGenerator
) -> None:
    from homeassistant.components.frontend import DATA_EXTRA_MODULE_URL

    assert await async_setup_component(hass, "frontend", {})
    await set_up_station(hass, tmp_path)
    assert any(url.startswith(CARD_URL + "?v=") for url in hass.data[DATA_EXTRA_MODULE_URL].urls)
    client = await hass_client()
    response = await client.get(CARD_URL)
    assert response.status == 200
    text = await response.text()
    assert 'const CARD = "edge-inspector-card"' in text
    assert "ll-strategy-dashboard-edge-inspector" in text
    for path in ("%2E%2E/manifest.json", "..%2Fservices.py", "nothing.js"):
        url = URL(f"/edge_inspector_frontend/{path}", encoded=True)
        response = await client.get(url)
        assert response.status in (400, 403, 404), path
        assert "edge_inspector" not in await response.text()


async def test_the_built_in_dashboard_names_the_demo_stations_entities(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path
) -> None:
    await set_up_station(hass, tmp_path)
    known = {e.entity_id for e in er.async_get(hass).entities.values() if e.platform == DOMAIN}
    text = (ROOT / "dashboards" / "edge-inspector-builtin.yaml").read_text()
    # written with the current release's ids; on a release before 2026.9 a user drops the area
    dashboard = yaml.safe_load(text.replace(".line_2_press_", f".{PRESS}_"))
    named: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"entity", "entity_id"}:
                    named.add(value)
                elif key == "entities":
                    named.update(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert named and named <= known, named - known
    strategy = yaml.safe_load((ROOT / "dashboards" / "edge-inspector.yaml").read_text())
    assert strategy["strategy"]["type"] == "custom:edge-inspector"


async def test_the_blueprint_notifies_with_the_picture_and_the_vlm_summary(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, ollama: FakeOllama
) -> None:
    hass.config.config_dir = str(tmp_path / "config")  # not the shared testing_config
    folder = Path(hass.config.path("blueprints", "automation", "edge_inspector"))
    folder.mkdir(parents=True)
    source = ROOT / "blueprints" / "automation" / "edge_inspector" / "notify_on_defect.yaml"
    shutil.copy(source, folder)
    blueprint = yaml.load(source.read_text(), Loader=_Loader)
    assert blueprint["blueprint"]["domain"] == "automation"
    calls: list[ServiceCall] = async_mock_service(hass, "notify", "phone")

    entry = MockConfigEntry(
        domain=DOMAIN,
        data={
            "ollama_url": ollama.url,
            "ollama_model": "qwen2.5vl:7b",
            "storage": str(tmp_path / "store"),
        },
        options={"request_timeout": 5, "retry_interval": 0.5},
        subentries_data=[_station(interval=3600, mode="triggered")],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    device_id = next(
        e.device_id for e in er.async_get(hass).entities.values() if e.platform == DOMAIN
    )
    assert await async_setup_component(
        hass,
        "automation",
        {
            "automation": {
                "use_blueprint": {
                    "path": "edge_inspector/notify_on_defect.yaml",
                    "input": {
                        "stations": [device_id],
                        "notify_action": "notify.phone",
                        "wait_for_report": 30,
                    },
                }
            }
        },
    )
    await hass.async_block_till_done()
    await hass.services.async_call(
        DOMAIN, "inspect", {"device_id": device_id, "part_id": "P-9"}, blocking=True
    )
    await _until(hass, lambda: calls)
    data = calls[0].data
    assert data["title"].startswith("Press: ")
    assert data["message"] == "medium scratch found Part P-9."  # the fake model's summary
    assert data["data"]["image"] == f"/api/image_proxy/image.{PRESS}_last_defect"
    assert data["data"]["tag"]
