"""Edge Inspector: cameras become visual-inspection stations in Home Assistant."""

from __future__ import annotations

import logging
from pathlib import Path

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import (
    ConfigEntryAuthFailed,
    ConfigEntryError,
    ConfigEntryNotReady,
)
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.typing import ConfigType

from .const import DOMAIN
from .entry_config import EngineNotInstalledError, async_create_engine
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


FRONTEND_URL = "/edge_inspector_frontend"
CARD_FILE = "edge-inspector-card.js"


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register what exists whether or not an entry is loaded: the services, the intents, the
    LLM API, the websocket commands and the dashboard card."""
    from . import llm_api
    from .intents import async_setup_intents
    from .services import async_setup_services
    from .websocket import async_setup_websocket

    async_setup_services(hass)
    async_setup_intents(hass)
    llm_api.async_register(hass)
    async_setup_websocket(hass)
    await _async_register_card(hass)
    return True


async def _async_register_card(hass: HomeAssistant) -> None:
    """Serve the Lovelace card (and the dashboard strategy) and load it in every browser."""
    from homeassistant.components.http import StaticPathConfig

    folder = Path(__file__).parent / "frontend"
    await hass.http.async_register_static_paths(
        [StaticPathConfig(FRONTEND_URL, str(folder), cache_headers=False)]
    )
    if "frontend" in hass.config.components:
        from homeassistant.components import frontend
        from homeassistant.loader import async_get_integration

        version = (await async_get_integration(hass, DOMAIN)).version
        frontend.add_extra_js_url(hass, f"{FRONTEND_URL}/{CARD_FILE}?v={version}")


async def async_setup_entry(hass: HomeAssistant, entry: EdgeInspectorConfigEntry) -> bool:
    """Start the engine with the entry's stations."""
    from edge_inspector.errors import ConfigError, EdgeInspectorError, EngineAuthError

    try:
        engine, config = await async_create_engine(hass, entry)
    except EngineNotInstalledError as exc:
        raise ConfigEntryError(
            translation_domain=DOMAIN,
            translation_key="engine_not_installed",
            translation_placeholders={"error": str(exc)},
        ) from exc
    except (ConfigError, ValueError) as exc:
        raise ConfigEntryError(
            translation_domain=DOMAIN,
            translation_key="invalid_configuration",
            translation_placeholders={"error": str(exc)},
        ) from exc
    hub = EdgeInspectorHub(hass, entry, engine, config)
    try:
        await hub.async_start()
    except EngineAuthError as exc:  # a new token is needed: Home Assistant asks for it
        await hub.async_stop()
        raise ConfigEntryAuthFailed(
            translation_domain=DOMAIN,
            translation_key="engine_token_refused",
            translation_placeholders={"error": str(exc)},
        ) from exc
    except EdgeInspectorError as exc:
        await hub.async_stop()
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN,
            translation_key="engine_not_ready",
            translation_placeholders={"error": str(exc)},
        ) from exc
    entry.runtime_data = hub
    from .intents import async_register_sentences

    try:
        entry.async_on_unload(async_register_sentences(hass, hub))
        await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    except BaseException:
        await hub.async_stop()  # a set-up that fails leaves no engine (or its tasks) running
        raise
    entry.async_on_unload(entry.add_update_listener(_async_reload))
    return True


async def _async_reload(hass: HomeAssistant, entry: EdgeInspectorConfigEntry) -> None:
    await hass.config_entries.async_reload(entry.entry_id)


async def async_unload_entry(hass: HomeAssistant, entry: EdgeInspectorConfigEntry) -> bool:
    """Stop the engine: what was detected is written, threads end."""
    unloaded = await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
    if unloaded:
        await entry.runtime_data.async_stop()
    return unloaded
