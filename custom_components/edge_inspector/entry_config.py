"""From a config entry to an engine: the entry's stations and options translated into the
engine's configuration, and the engine built (in this process, or a client of the service);
and the stations as Home Assistant shows them (`StationInfo`).

Nothing here blocks Home Assistant's event loop: the in-process engine's modules (PyTorch,
Ultralytics) are imported on the import executor, and files are looked at on the executor.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from homeassistant.config_entries import ConfigEntry, ConfigSubentry
from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession

from edge_inspector.config import EngineConfig
from edge_inspector.demo import DEMO_MODEL

from .const import (
    CONF_ACTIONS,
    CONF_CAMERA,
    CONF_CAMERAS,
    CONF_DEFECTS,
    CONF_ENGINE_TOKEN,
    CONF_ENGINE_URL,
    CONF_IMGSZ,
    CONF_INTERVAL,
    CONF_LINE,
    CONF_MODEL_PATH,
    CONF_OLLAMA_MODEL,
    CONF_OLLAMA_URL,
    CONF_PRODUCT,
    CONF_SHIFTS,
    CONF_STORAGE,
    DEFAULT_IMGSZ,
    DEFAULT_INTERVAL,
    DEFAULT_OLLAMA_MODEL,
    DEFAULT_SHIFTS,
    DOMAIN,
    SUBENTRY_STATION,
)

if TYPE_CHECKING:
    from edge_inspector.contract import InspectionEngine
    from edge_inspector.events import StationState


def station_id(subentry: ConfigSubentry) -> str:
    """The engine's id of a station: stable for the subentry's life."""
    return f"s_{subentry.subentry_id.lower()}"


def model_path(value: str | None) -> Path:
    """A station's model file; `demo` (or nothing) is the bundled demo defect model."""
    if not value or value == "demo":
        return DEMO_MODEL
    return Path(value)


@dataclass(frozen=True, slots=True)
class StationInfo:
    """What a station is, as Home Assistant shows it: fixed while the entry is loaded (a change
    reloads it). What it is doing lives with the job that follows it: its state and figures in
    its coordinator (`coordinator.py`), its camera's health in `camera_feed.py`."""

    station_id: str
    subentry_id: str  # its device's identifier (a service's stations: entry id and station id)
    name: str
    camera_entity_id: str  # "" for a service's station that reads its own camera
    interval: float  # seconds between pictures from the camera entity
    defects: tuple[str, ...]
    line: str | None = None
    model_name: str | None = None
    remote: bool = False  # a station of an engine service (no subentry; stations live there)


def subentry_stations(entry: ConfigEntry) -> list[StationInfo]:
    """The stations of an in-process hub: its station subentries."""
    return [
        StationInfo(
            station_id=station_id(subentry),
            subentry_id=subentry.subentry_id,
            name=subentry.title,
            camera_entity_id=subentry.data[CONF_CAMERA],
            interval=float(subentry.data.get(CONF_INTERVAL, DEFAULT_INTERVAL)),
            defects=tuple(sorted(subentry.data[CONF_DEFECTS])),
            line=subentry.data.get(CONF_LINE) or None,
            model_name=model_path(subentry.data.get(CONF_MODEL_PATH)).name,
        )
        for subentry in entry.subentries.values()
        if subentry.subentry_type == SUBENTRY_STATION
    ]


def service_stations(entry: ConfigEntry, states: list[StationState]) -> list[StationInfo]:
    """The stations of an engine service, as it reports them; the cameras mapped in the
    options feed its `push` stations."""
    cameras = parse_cameras(entry.options.get(CONF_CAMERAS, ""))
    interval = float(entry.options.get(CONF_INTERVAL, DEFAULT_INTERVAL))
    return [
        StationInfo(
            station_id=state.station_id,
            subentry_id=f"{entry.entry_id}_{state.station_id}",
            name=state.name,
            camera_entity_id=cameras.get(state.station_id, ""),
            interval=interval,
            defects=tuple(sorted(state.thresholds)),
            line=state.line,
            model_name=state.model,
            remote=True,
        )
        for state in states
    ]


def parse_actions(text: str) -> list[Any]:
    """The mapped actions from the options: a YAML list, as `vlm.actions` in the engine's file."""
    if not text or not text.strip():
        return []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"actions: not valid YAML: {exc}") from None
    if not isinstance(data, list):
        raise ValueError("actions: expected a list of actions")
    return data


def parse_cameras(text: str) -> dict[str, str]:
    """Remote mode's camera map from the options: YAML `station_id: camera.entity_id`."""
    if not text or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"cameras: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.startswith("camera.")
        for k, v in data.items()
    ):
        raise ValueError("cameras: expected lines of `station_id: camera.entity_id`")
    return dict(data)


def parse_shifts(text: str) -> list[str]:
    """The shifts' start times from the options ("06:00, 14:00, 22:00")."""
    return [part for part in re.split(r"[,\s]+", text.strip()) if part]


def engine_config(hass: HomeAssistant, entry: ConfigEntry) -> EngineConfig:
    """The engine configuration of a hub entry and its station subentries (blocking: it looks
    for the manuals folder). ConfigError or ValueError for what does not fit."""
    storage = entry.data.get(CONF_STORAGE) or hass.config.path(DOMAIN)
    stations = []
    for subentry in entry.subentries.values():
        if subentry.subentry_type != SUBENTRY_STATION:
            continue
        data = subentry.data
        stations.append(
            {
                "id": station_id(subentry),
                "name": subentry.title,
                "source": {"type": "push"},
                "mode": data.get("mode", "continuous"),
                "fps": None,
                "model": {
                    "path": str(model_path(data.get(CONF_MODEL_PATH))),
                    "imgsz": int(data.get(CONF_IMGSZ, DEFAULT_IMGSZ)),
                },
                "defects": {k: float(v) for k, v in data[CONF_DEFECTS].items()},
                "product": data.get(CONF_PRODUCT) or None,
                "line": data.get(CONF_LINE) or None,
            }
        )
    config: dict[str, Any] = {"stations": stations, "store": {"path": storage}}
    manuals = Path(storage) / "manuals"
    if manuals.is_dir():  # equipment manuals for the VLM and for Assist's manual search
        config["manuals"] = {"dir": str(manuals)}
    vlm: dict[str, Any] = {"actions": parse_actions(entry.options.get(CONF_ACTIONS, ""))}
    if entry.data.get(CONF_OLLAMA_URL):
        vlm["host"] = entry.data[CONF_OLLAMA_URL]
        vlm["model"] = entry.data.get(CONF_OLLAMA_MODEL) or DEFAULT_OLLAMA_MODEL
    for key in ("request_timeout", "retry_interval", "deadline"):
        if key in entry.options:
            vlm[key] = entry.options[key]
    config["vlm"] = vlm
    config["quality"] = {
        "shifts": parse_shifts(entry.options.get(CONF_SHIFTS, DEFAULT_SHIFTS)),
        "timezone": hass.config.time_zone,
    }
    # A hub without stations yet is fine: they are added as subentries.
    return EngineConfig.model_validate(config, context={"allow_no_stations": True})


class EngineNotInstalledError(Exception):
    """In-process mode where the model runtime cannot be installed (Home Assistant OS)."""


async def async_create_engine(
    hass: HomeAssistant, entry: ConfigEntry
) -> tuple[InspectionEngine, EngineConfig | None]:
    """The entry's engine, not started, and its configuration (None: an engine service's).
    EngineNotInstalledError, ConfigError, ValueError."""
    if entry.data.get(CONF_ENGINE_URL):
        from edge_inspector.api.client import RemoteEngine

        remote = RemoteEngine(
            entry.data[CONF_ENGINE_URL],
            entry.data.get(CONF_ENGINE_TOKEN),
            session=async_get_clientsession(hass),
        )
        return remote, None
    config = await hass.async_add_executor_job(engine_config, hass, entry)
    try:  # the model runtime (in-process mode only): heavy imports, off the event loop
        module = await hass.async_add_import_executor_job(
            importlib.import_module, "edge_inspector.engine"
        )
    except ImportError as exc:
        raise EngineNotInstalledError(
            f"the in-process engine needs PyTorch and Ultralytics ({exc}): install "
            "edge-inspector[engine] into Home Assistant's environment, or run the engine "
            "as a service and give its URL"
        ) from exc
    engine: InspectionEngine = module.Engine(config, session=async_get_clientsession(hass))
    return engine, config
