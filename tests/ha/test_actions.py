"""The VLM's tool calls become Home Assistant service calls, under the same guard rails as the
engine; device triggers fire automations; the flows check Ollama before saving."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from homeassistant.components import persistent_notification
from homeassistant.components.device_automation import DeviceAutomationType
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_get_device_automations,
)

from custom_components.edge_inspector.const import DOMAIN, EVENT_INCIDENT
from custom_components.edge_inspector.devices import device_by_identifier
from tests.ha.test_integration import _station, _until, set_up_station
from tests.ha_release import station_object_id
from tests.ollama_server import FakeOllama, Reply

PRESS = station_object_id("Press", area="Line 2")  # its entities' id prefix

ACTIONS = """\
- name: stop_conveyor
  description: Stop the conveyor of line 2
  parameters:
    properties: {reason: {type: string, maxLength: 100}}
    required: [reason]
  target:
    type: service
    service: input_boolean.turn_off
    data: {entity_id: input_boolean.conveyor}
  rate_limit: {calls: 5, per_seconds: 60}
- name: sound_alarm
  description: Sound the line alarm
  target: {type: service, service: input_boolean.turn_on, data: {entity_id: input_boolean.alarm}}
  confirm: true
"""


async def _setup(hass: HomeAssistant, tmp_path: Path, ollama: FakeOllama) -> MockConfigEntry:
    assert await async_setup_component(
        hass, "input_boolean", {"input_boolean": {"conveyor": {"initial": True}, "alarm": {}}}
    )
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={
            "ollama_url": ollama.url,
            "ollama_model": "qwen2.5vl:7b",
            "storage": str(tmp_path / "store"),
        },
        options={"actions": ACTIONS, "request_timeout": 5, "retry_interval": 0.5},
        subentries_data=[_station(interval=3600, mode="triggered")],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


async def test_tool_calls_run_mapped_services_and_confirmations_wait_for_a_person(
    hass: HomeAssistant,
    tmp_path: Path,
    camera_file: Path,
    ollama: FakeOllama,
) -> None:
    ollama.queue(
        Reply.json(
            {
                "defect_type": "crack",
                "severity": "critical",
                "confidence": 0.9,
                "description": "crack at the bend",
            }
        ),
        Reply.tools(
            ("stop_conveyor", {"reason": "crack"}),
            ("sound_alarm", {}),
            ("open_valve", {"valve": 1}),
            ("stop_conveyor", {"reason": 42}),
        ),
        Reply(content="Line stopped."),
    )
    entry = await _setup(hass, tmp_path, ollama)
    reports = []
    hass.bus.async_listen(EVENT_INCIDENT, lambda e: reports.append(e.data))
    device = device_by_identifier(hass, (DOMAIN, next(iter(entry.subentries))), entry.entry_id)
    assert device is not None
    verdict = await hass.services.async_call(
        DOMAIN, "inspect", {"device_id": device.id}, blocking=True, return_response=True
    )
    assert verdict["verdict"] == "fail"
    await _until(hass, lambda: any(r["vlm_status"] == "done" for r in reports))
    assert hass.states.get("input_boolean.conveyor").state == "off"  # the mapped service ran
    assert hass.states.get("input_boolean.alarm").state == "off"  # confirm: it waits
    notes = persistent_notification._async_get_or_create_notifications(hass)
    # the engine tells the incident's alerts after its update: wait for the request
    await _until(hass, lambda: any("sound_alarm" in n["message"] for n in notes.values()))
    [request] = [n for n in notes.values() if "sound_alarm" in n["message"]]
    incident_id = verdict["new_incident_ids"][0]
    stored = await entry.runtime_data.engine.store.incident(incident_id)
    assert stored is not None and stored.vlm is not None
    assert [(a.tool, str(a.status)) for a in stored.vlm.actions] == [
        ("stop_conveyor", "executed"),
        ("sound_alarm", "awaiting_confirmation"),
        ("open_valve", "refused"),
        ("stop_conveyor", "refused"),
    ]
    request_id = stored.vlm.actions[1].request_id
    assert request_id in request["message"]
    done = await hass.services.async_call(
        DOMAIN,
        "confirm_action",
        {"incident_id": incident_id, "request_id": request_id, "approve": True},
        blocking=True,
        return_response=True,
    )
    assert done["status"] == "executed"
    assert hass.states.get("input_boolean.alarm").state == "on"
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_a_missing_ollama_model_raises_a_repair_issue_until_it_is_pulled(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, ollama: FakeOllama
) -> None:
    from homeassistant.helpers import issue_registry as ir

    ollama.models = {"llava:7b": ["completion", "vision"]}
    entry = await _setup(hass, tmp_path, ollama)
    hub = entry.runtime_data
    assert hub.engine.enricher is not None
    await _until(hass, lambda: hub.engine.enricher.last_error)
    await hub._check_vlm()
    issue = ir.async_get(hass).async_get_issue(DOMAIN, "ollama_model_missing")
    assert (
        issue is not None and "ollama pull qwen2.5vl:7b" in issue.translation_placeholders["error"]
    )
    ollama.models = {"qwen2.5vl:7b": ["completion", "vision", "tools"]}
    hub.engine.enricher.retry_now()
    await _until(hass, lambda: hub.engine.enricher.last_error is None)
    await hub._check_vlm()
    assert ir.async_get(hass).async_get_issue(DOMAIN, "ollama_model_missing") is None
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_a_device_trigger_runs_an_automation_on_a_defect(
    hass: HomeAssistant,
    tmp_path: Path,
    camera_file: Path,
) -> None:
    entry, device_id = await set_up_station(hass, tmp_path)
    triggers = await async_get_device_automations(hass, DeviceAutomationType.TRIGGER, device_id)
    kinds = {(t["type"], t.get("subtype")) for t in triggers if t["domain"] == DOMAIN}
    assert ("defect", None) in kinds and ("defect", "scratch") in kinds
    assert ("report_ready", None) in kinds
    assert await async_setup_component(
        hass,
        "automation",
        {
            "automation": {
                "trigger": {
                    "platform": "device",
                    "domain": DOMAIN,
                    "device_id": device_id,
                    "type": "defect",
                },
                "action": {
                    "event": "line_saw_defect",
                    "event_data": {"cls": "{{ trigger.event.data.defect_class }}"},
                },
            }
        },
    )
    seen: list[str] = []
    hass.bus.async_listen("line_saw_defect", lambda e: seen.append(e.data["cls"]))
    await hass.services.async_call(DOMAIN, "inspect", {"device_id": device_id}, blocking=True)
    await _until(hass, lambda: seen)
    assert seen[0] in ("scratch", "dent", "crack", "spot")
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_the_hub_flow_checks_ollama(
    hass: HomeAssistant, tmp_path: Path, ollama: FakeOllama
) -> None:
    flow = await hass.config_entries.flow.async_init(DOMAIN, context={"source": "user"})
    down = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {"ollama_url": "http://127.0.0.1:9", "ollama_model": "qwen2.5vl:7b"}
    )
    assert down["errors"] == {"base": "cannot_connect"}
    missing = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {"ollama_url": ollama.url, "ollama_model": "llava:34b"}
    )
    assert missing["errors"] == {"base": "model_missing"}
    ok = await hass.config_entries.flow.async_configure(
        flow["flow_id"],
        {"ollama_url": ollama.url, "ollama_model": "qwen2.5vl:7b", "storage": str(tmp_path)},
    )
    assert ok["type"] is FlowResultType.CREATE_ENTRY
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    await hass.async_block_till_done()

    # reconfigure: the same checks, then a reload with the new settings
    before = entry.runtime_data
    flow = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": "reconfigure", "entry_id": entry.entry_id}
    )
    again = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {"ollama_url": ollama.url, "ollama_model": "nope:1b"}
    )
    assert again["errors"] == {"base": "model_missing"}
    saved = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {"ollama_url": "", "storage": str(tmp_path)}
    )
    assert saved["type"] is FlowResultType.ABORT and saved["reason"] == "reconfigure_successful"
    assert entry.data["ollama_url"] == ""
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED and entry.runtime_data is not before  # reloaded

    # options: the mapped actions are validated before they are saved
    options = await hass.config_entries.options.async_init(entry.entry_id)
    bad = await hass.config_entries.options.async_configure(
        options["flow_id"],
        {
            "actions": "- name: search_manual\n  description: x\n"
            "  target: {type: service, service: a.b}\n"
        },
    )
    assert bad["errors"] == {"actions": "invalid_actions"}
    assert "built-in tool" in bad["description_placeholders"]["error"]
    topics = await hass.config_entries.options.async_configure(
        options["flow_id"],
        {"actions": ACTIONS, "mqtt_publish": True, "mqtt_base_topic": "plant a/#"},
    )
    assert topics["errors"] == {"mqtt_base_topic": "invalid_topic"}
    no_mqtt = await hass.config_entries.options.async_configure(
        options["flow_id"], {"actions": ACTIONS, "mqtt_publish": True, "mqtt_base_topic": "ok"}
    )
    assert no_mqtt["errors"] == {"mqtt_publish": "mqtt_not_set_up"}
    no_notify = await hass.config_entries.options.async_configure(
        options["flow_id"], {"actions": ACTIONS, "notify_service": "notify.nobody"}
    )
    assert no_notify["errors"] == {"notify_service": "unknown_service"}
    good = await hass.config_entries.options.async_configure(
        options["flow_id"], {"actions": ACTIONS}
    )
    assert good["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert entry.options["actions"] == ACTIONS
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


async def test_a_station_is_reconfigured(
    hass: HomeAssistant,
    tmp_path: Path,
    camera_file: Path,
) -> None:
    entry, _ = await set_up_station(hass, tmp_path)
    subentry = next(iter(entry.subentries.values()))
    flow = await entry.start_subentry_reconfigure_flow(hass, subentry.subentry_id)
    assert flow["type"] is FlowResultType.FORM
    result = await hass.config_entries.subentries.async_configure(
        flow["flow_id"],
        {
            "camera_entity_id": "camera.press_camera",
            "model_path": "demo",
            "defects": "crack",
            "threshold": 0.6,
            "interval": 5,
            "mode": "continuous",
            "imgsz": 320,
        },
    )
    assert result["type"] is FlowResultType.ABORT
    await hass.async_block_till_done()
    assert entry.subentries[subentry.subentry_id].data["defects"] == {"crack": 0.6}
    await _until(
        hass, lambda: hass.states.get(f"number.{PRESS}_confidence_threshold").state == "0.6"
    )
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    await asyncio.sleep(0)


async def test_actionable_notifications_take_the_operators_answer(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, ollama: FakeOllama
) -> None:
    """A defect asks the phone "real or false alarm?"; a confirmation request asks "run or
    decline?"; the buttons' answers (mobile_app_notification_action) are carried out."""
    sent: list[dict[str, Any]] = []

    async def fake_notify(call: ServiceCall) -> None:
        sent.append(dict(call.data))

    hass.services.async_register("notify", "mobile_app_line_phone", fake_notify)
    ollama.queue(
        Reply.json(
            {
                "defect_type": "crack",
                "severity": "critical",
                "confidence": 0.9,
                "description": "crack",
            }
        ),
        Reply.tools(("sound_alarm", {})),
        Reply(content="Asked."),
    )
    assert await async_setup_component(
        hass, "input_boolean", {"input_boolean": {"conveyor": {"initial": True}, "alarm": {}}}
    )
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={
            "ollama_url": ollama.url,
            "ollama_model": "qwen2.5vl:7b",
            "storage": str(tmp_path / "store"),
        },
        options={
            "actions": ACTIONS,
            "request_timeout": 5,
            "notify_service": "notify.mobile_app_line_phone",
        },
        subentries_data=[_station(interval=3600, mode="triggered")],
        unique_id=DOMAIN,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    device = device_by_identifier(hass, (DOMAIN, next(iter(entry.subentries))), entry.entry_id)
    assert device is not None
    verdict = await hass.services.async_call(
        DOMAIN, "inspect", {"device_id": device.id}, blocking=True, return_response=True
    )
    incident_id = verdict["new_incident_ids"][0]
    await _until(hass, lambda: len(sent) >= 2)
    buttons = [a["action"] for n in sent for a in n["data"]["actions"]]
    confirm = next(b for b in buttons if b.startswith("EDGE_INSPECTOR_REJECT|"))
    approve = next(b for b in buttons if b.startswith("EDGE_INSPECTOR_APPROVE|"))
    hass.bus.async_fire("mobile_app_notification_action", {"action": approve})
    await _until(hass, lambda: hass.states.get("input_boolean.alarm").state == "on")
    hass.bus.async_fire("mobile_app_notification_action", {"action": confirm})
    store = entry.runtime_data.engine.store

    async def rejected() -> bool:
        found = await store.incident(incident_id)
        return found is not None and found.state == "rejected"

    async with asyncio.timeout(10):
        while not await rejected():
            await asyncio.sleep(0.05)
    hass.bus.async_fire("mobile_app_notification_action", {"action": "SOMEONE_ELSE|x"})
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
