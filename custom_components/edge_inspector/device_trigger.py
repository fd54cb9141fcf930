"""Device triggers: "defect detected on <station>", for any class or one class, and "report
ready" when the VLM has answered for an incident."""

from __future__ import annotations

from homeassistant.components.device_automation import DEVICE_TRIGGER_BASE_SCHEMA
from homeassistant.components.device_automation.exceptions import (
    InvalidDeviceAutomationConfig,
)
from homeassistant.components.homeassistant.triggers import event as event_trigger
from homeassistant.const import CONF_DEVICE_ID, CONF_DOMAIN, CONF_PLATFORM, CONF_TYPE
from homeassistant.core import CALLBACK_TYPE, HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.trigger import TriggerActionType, TriggerInfo
from homeassistant.helpers.typing import ConfigType

from .const import DOMAIN, EVENT_DEFECT, EVENT_INCIDENT
from .hub import EdgeInspectorHub
from .validation import vol

CONF_SUBTYPE = "subtype"
TRIGGER_DEFECT = "defect"
TRIGGER_REPORT = "report_ready"

TRIGGER_SCHEMA = DEVICE_TRIGGER_BASE_SCHEMA.extend(
    {
        vol.Required(CONF_TYPE): vol.In([TRIGGER_DEFECT, TRIGGER_REPORT]),
        vol.Optional(CONF_SUBTYPE): str,
    }
)


def _classes(hass: HomeAssistant, device_id: str) -> tuple[str, ...]:
    device = dr.async_get(hass).async_get(device_id)
    if device is not None:
        subentries = {ident for domain, ident in device.identifiers if domain == DOMAIN}
        for entry in hass.config_entries.async_loaded_entries(DOMAIN):
            hub: EdgeInspectorHub = entry.runtime_data
            for info in hub.stations.values():
                if info.subentry_id in subentries:
                    return info.defects
    raise InvalidDeviceAutomationConfig(f"not an Edge Inspector station: {device_id}")


async def async_get_triggers(hass: HomeAssistant, device_id: str) -> list[dict[str, str]]:
    base = {CONF_PLATFORM: "device", CONF_DEVICE_ID: device_id, CONF_DOMAIN: DOMAIN}
    triggers = [{**base, CONF_TYPE: TRIGGER_DEFECT}]
    triggers += [
        {**base, CONF_TYPE: TRIGGER_DEFECT, CONF_SUBTYPE: name}
        for name in _classes(hass, device_id)
    ]
    triggers.append({**base, CONF_TYPE: TRIGGER_REPORT})
    return triggers


async def async_attach_trigger(
    hass: HomeAssistant,
    config: ConfigType,
    action: TriggerActionType,
    trigger_info: TriggerInfo,
) -> CALLBACK_TYPE:
    data: dict[str, str] = {CONF_DEVICE_ID: config[CONF_DEVICE_ID]}
    if config[CONF_TYPE] == TRIGGER_REPORT:
        event_type = EVENT_INCIDENT
        data["vlm_status"] = "done"
    else:
        event_type = EVENT_DEFECT
        if CONF_SUBTYPE in config:
            data["defect_class"] = config[CONF_SUBTYPE]
    event_config = event_trigger.TRIGGER_SCHEMA(
        {CONF_PLATFORM: "event", "event_type": event_type, "event_data": data}
    )
    return await event_trigger.async_attach_trigger(
        hass, event_config, action, trigger_info, platform_type="device"
    )
