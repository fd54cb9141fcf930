"""Edge Inspector: cameras become visual-inspection stations in Home Assistant."""

from __future__ import annotations

import logging

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryError, ConfigEntryNotReady
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.typing import ConfigType

from .const import DOMAIN
from .hub import EdgeInspectorHub

_LOGGER = logging.getLogger(__name__)

PLATFORMS = (
    Platform.BINARY_SENSOR,
    Platform.BUTTON,
    Platform.EVENT,
    Platform.IMAGE,
    Platform.NUMBER,
    Platform.SENSOR,
    Platform.SWITCH,
)
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)

type EdgeInspectorConfigEntry = ConfigEntry[EdgeInspectorHub]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the services (they exist whether or not an entry is loaded)."""
    from .services import async_setup_services

    async_setup_services(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: EdgeInspectorConfigEntry) -> bool:
    """Start the engine with the entry's stations."""
    from edge_inspector.errors import ConfigError, EdgeInspectorError

    try:
        hub = EdgeInspectorHub(hass, entry)
    except (ConfigError, ValueError) as exc:
        raise ConfigEntryError(f"invalid station configuration: {exc}") from exc
    try:
        await hub.async_start()
    except EdgeInspectorError as exc:
        await hub.async_stop()
        raise ConfigEntryNotReady(str(exc)) from exc
    entry.runtime_data = hub
    entry.async_on_unload(entry.add_update_listener(_async_reload))
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def _async_reload(hass: HomeAssistant, entry: EdgeInspectorConfigEntry) -> None:
    await hass.config_entries.async_reload(entry.entry_id)


async def async_unload_entry(hass: HomeAssistant, entry: EdgeInspectorConfigEntry) -> bool:
    """Stop the engine: what was detected is written, threads end."""
    unloaded = await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
    if unloaded:
        await entry.runtime_data.async_stop()
    return unloaded
