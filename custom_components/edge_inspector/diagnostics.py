"""Diagnostics: the configuration and each station's state, with hosts, paths and cameras
redacted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from edge_inspector.errors import EngineConnectionError

from .const import CONF_CAMERA, CONF_ENGINE_TOKEN, CONF_ENGINE_URL, CONF_OLLAMA_URL, CONF_STORAGE

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

TO_REDACT = {
    CONF_OLLAMA_URL,
    CONF_STORAGE,
    CONF_CAMERA,
    CONF_ENGINE_TOKEN,
    CONF_ENGINE_URL,
    "host",
    "url",
    "path",
    "frame_path",
    "crop_path",
    "image_path",
    "camera_entity_id",
    "headers",
    "password",
    "token",
    "username",
}


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: EdgeInspectorConfigEntry
) -> dict[str, Any]:
    hub = entry.runtime_data
    stations = {}
    for sid, info in hub.stations.items():
        snapshot = hub.coordinators[sid].data
        last = snapshot.last_incident
        stations[info.name] = {
            "state": snapshot.state.model_dump(mode="json") if snapshot.state else None,
            "available": hub.is_available(sid),
            "camera_error": hub.cameras.health[sid].camera_error is not None,
            "last_incident": last.model_dump(mode="json", exclude={"detections"}) if last else None,
        }
    vlm_error: str | None = None
    try:
        status = await hub.engine.vlm_status()
    except EngineConnectionError as exc:
        status, vlm_error = None, str(exc)
    vlm: dict[str, Any] | None = None
    if status is not None:
        vlm = {
            "breaker": status.breaker,
            "queue_depth": status.queue_depth,
            "oldest_pending_s": status.oldest_pending_s,
            "enriched": status.enriched,
            "skipped": status.skipped,
            "coalesced": status.coalesced,
            "last_error": status.error,
            "model_missing": status.model_missing,
        }
    elif vlm_error is not None:
        vlm = {"last_error": vlm_error}
    engine: dict[str, Any] = {"mode": "remote" if hub.remote else "in-process"}
    if hub.remote:
        engine["connected"] = hub.is_connected
    return {
        "engine_mode": engine,
        "entry": async_redact_data(
            {"data": dict(entry.data), "options": dict(entry.options)}, TO_REDACT
        ),
        "stations_config": [
            async_redact_data(dict(s.data), TO_REDACT) for s in entry.subentries.values()
        ],
        "engine": async_redact_data(hub.config.model_dump(mode="json"), TO_REDACT),
        "stations": async_redact_data(stations, TO_REDACT),
        "vlm": vlm,
    }
