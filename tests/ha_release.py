"""What differs between the supported Home Assistant releases, for the tests.

Entity ids: from 2026.9 on, Home Assistant starts the id of a new device's entity with the
device's area (its default `entity_id_parts`: area, parent device, device, entity): a station on
"Line 2" gets `binary_sensor.line_2_press_defect`; before, `binary_sensor.press_defect`. We keep
the platform's naming (a station's line is its area, and two lines with a "Press" each get
distinct, readable ids) rather than forcing ids of our own, so tests name entities through this.

Deprecations: what Home Assistant logs when our code uses something it deprecated, on every
tested release; the tests fail on it.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homeassistant.core import HomeAssistant

# Read without importing Home Assistant: the suites that run without its pytest plugin (e2e,
# install) import httpx first, and Home Assistant 2026.11 refuses to be imported after it.
HA_RELEASE = tuple(int(part) for part in version("homeassistant").split(".")[:2])
AREA_IN_ENTITY_IDS = HA_RELEASE >= (2026, 9)

# helpers/frame.py's report_usage ("Detected that custom integration 'edge_inspector' calls ...")
# and helpers/deprecation.py ("The deprecated function x was used from edge_inspector. ...").
DEPRECATED_USE = re.compile(
    r"Detected that custom integration 'edge_inspector'"
    r"|The deprecated .+ was \w+ from edge_inspector\b"
)

# homeassistant/util/loop.py: I/O or an import in the event loop, traced to our code
BLOCKING_CALL = re.compile(r"Detected blocking call .+ by custom integration 'edge_inspector'")

__all__ = [
    "AREA_IN_ENTITY_IDS",
    "BLOCKING_CALL",
    "DEPRECATED_USE",
    "HA_RELEASE",
    "mqtt_entry_id",
    "station_object_id",
]


def station_object_id(station: str, area: str | None = None) -> str:
    """The object id part that a station device gives its entities on this release."""
    name = f"{area} {station}" if area and AREA_IN_ENTITY_IDS else station
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")  # Home Assistant's slugify, ASCII


def mqtt_entry_id(hass: HomeAssistant) -> str:
    """The MQTT integration's config entry (it owns the devices MQTT discovery makes)."""
    (entry,) = hass.config_entries.async_entries("mqtt")
    return entry.entry_id
