"""Entity ids as the Home Assistant release under test makes them.

From 2026.9 on, Home Assistant starts the id of a new device's entity with the device's area
(its default `entity_id_parts`: area, device, entity): a station on "Line 2" gets
`binary_sensor.line_2_press_defect`; before, `binary_sensor.press_defect`. We keep the platform's
naming (a station's line is its area, and two lines with a "Press" each get distinct, readable
ids) rather than forcing ids of our own, so tests name entities through this.
"""

from __future__ import annotations

from homeassistant.const import MAJOR_VERSION, MINOR_VERSION
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.util import slugify

AREA_IN_ENTITY_IDS = (MAJOR_VERSION, MINOR_VERSION) >= (2026, 9)


def station_object_id(station: str, area: str | None = None) -> str:
    """The object id part that a station device gives its entities on this release."""
    if area and AREA_IN_ENTITY_IDS:
        return slugify(f"{area} {station}")
    return slugify(station)


def device(
    hass: HomeAssistant, identifier: tuple[str, str], entry_id: str
) -> dr.DeviceEntry | None:
    """A device by identifier and the config entry that owns it, on every tested release
    (2026.8 made devices per entry; `async_get_device` raises for tests on 2026.11)."""
    registry = dr.async_get(hass)
    if hasattr(registry, "async_get_device_by_identifier"):
        return registry.async_get_device_by_identifier(identifier, entry_id)
    return registry.async_get_device(identifiers={identifier})


def mqtt_entry_id(hass: HomeAssistant) -> str:
    (entry,) = hass.config_entries.async_entries("mqtt")
    return entry.entry_id
