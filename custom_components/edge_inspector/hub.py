"""The engine inside Home Assistant: its life, its stations' commands, and the jobs around it.

The engine runs in Home Assistant's process and event loop (YOLO on the engine's own inference
thread, every blocking step on executors, so the event loop never waits for a model), or as a
service reached over HTTP. Each station in process is a config subentry: a camera entity, a
model file and its rules; a service's stations are the ones it reports. The hub starts and
stops the engine, follows its stations (a service whose stations change reloads the entry;
devices of stations gone are removed), raises the repair issues (a station that cannot run,
Ollama without its model), asks for a new token when a service refuses it, and carries out
the stations' commands. The rest is done by the job's own module, wired here:

- `coordinator.py`: the engine's events as each station's state for entities, and bus events;
- `camera_feed.py`: pictures from camera entities on each station's interval and on demand;
- `notifications.py`: actionable and persistent notifications, and their answers;
- `entry_config.py`: the entry translated into the engine's configuration and the stations.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.event import async_track_time_interval

from edge_inspector.config import EngineConfig
from edge_inspector.errors import (
    EdgeInspectorError,
    EngineConnectionError,
    IncidentNotFoundError,
    NotFoundError,
)
from edge_inspector.events import Incident, IncidentState, InspectionResult, StationState
from edge_inspector.sinks import EventSink

from .camera_feed import CameraFeed
from .const import CONF_MQTT_BASE_TOPIC, CONF_MQTT_PUBLISH, DOMAIN
from .coordinator import StationCoordinator, StationEvents
from .entry_config import StationInfo, service_stations, subentry_stations
from .errors import station_error
from .notifications import Notifications
from .service_actions import HaServicePort

if TYPE_CHECKING:
    from edge_inspector.contract import InspectionEngine

_LOGGER = logging.getLogger(__name__)


class EdgeInspectorHub(EventSink):
    """The entry's runtime data: the engine, its stations and the jobs that serve them.

    As an engine sink it follows only the engine's life: a service going away or coming back,
    and stations it did not have."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        engine: InspectionEngine,
        config: EngineConfig | None = None,
    ) -> None:
        """`engine`: in this process (with `config`, the entry's translation) or a service."""
        self.hass = hass
        self.entry = entry
        self.remote = config is None
        # the engine's configuration in process; a service's stations come from it
        self.config = config or EngineConfig.model_validate(
            {"stations": []}, context={"allow_no_stations": True}
        )
        self.engine = engine
        # what Home Assistant shows of each station (a service's: once it has answered)
        self.stations: dict[str, StationInfo] = {}
        self.events = StationEvents(hass, entry)
        self.cameras = CameraFeed(
            hass, entry, engine, self.stations, self.events.async_availability_changed
        )
        self.notifications = Notifications(hass, entry, engine, self.stations)
        # `service` action targets: run here, for the engine in process or the service
        engine.set_service_port(HaServicePort(hass))
        for sink in (self.notifications, self.events, self):
            engine.add_sink(sink)
        if entry.options.get(CONF_MQTT_PUBLISH):
            from .mqtt_publish import HaMqttPublisher

            engine.add_sink(
                HaMqttPublisher(
                    hass,
                    entry.options.get(CONF_MQTT_BASE_TOPIC) or DOMAIN,
                    self.incident_image,
                )
            )
        if not self.remote:
            self._add_stations(subentry_stations(entry))
        self._unsubs: list[Callable[[], None]] = []
        self._reloading = False

    @property
    def coordinators(self) -> dict[str, StationCoordinator]:
        """Each station's coordinator (its state, for its entities), by station id."""
        return self.events.coordinators

    def _add_stations(self, stations: list[StationInfo]) -> None:
        for info in stations:
            self.stations[info.station_id] = info
            self.events.add_station(info)

    # -- life ---------------------------------------------------------------------------

    def _stations_changed(self, why: str) -> None:
        """The engine's stations are not the ones we show: reload (once) to follow them."""
        if self._reloading:
            return
        self._reloading = True
        _LOGGER.info("%s: reloading Edge Inspector", why)
        self.hass.config_entries.async_schedule_reload(self.entry.entry_id)

    def _remove_stale_devices(self) -> None:
        """Devices of stations the engine no longer has (its file changed) go away."""
        registry = dr.async_get(self.hass)
        wanted = {info.subentry_id for info in self.stations.values()}
        for device in dr.async_entries_for_config_entry(registry, self.entry.entry_id):
            idents = {ident for domain, ident in device.identifiers if domain == DOMAIN}
            if idents and not idents & wanted:
                _LOGGER.info("station %s is gone from the engine: removing it", device.name)
                registry.async_remove_device(device.id)

    async def on_connection(self, connected: bool) -> None:
        """The engine service went away or came back (EventSink; its entities are told by
        the coordinators')."""
        if not connected and self.engine.token_refused:
            # its token changed while we ran: Home Assistant asks for the new one (reauth)
            self.entry.async_start_reauth(self.hass)
        if connected:
            engine_ids = {s.station_id for s in self.engine.states()}
            if engine_ids != set(self.stations):
                self._stations_changed("the engine's stations changed")

    async def on_station_state(self, state: StationState) -> None:
        if self.remote and state.station_id not in self.stations:
            self._stations_changed(f"the engine has a new station {state.station_id}")

    async def async_start(self) -> None:
        await self.engine.start()
        if self.remote:
            self._add_stations(service_stations(self.entry, self.engine.states()))
            self._remove_stale_devices()
        await self.events.async_load(self.engine)
        for sid, info in self.stations.items():
            state = self.coordinators[sid].data.state
            issue = f"model_missing_{info.subentry_id}"
            if not self.engine.is_running(sid):
                ir.async_create_issue(
                    self.hass,
                    DOMAIN,
                    issue,
                    is_fixable=False,
                    severity=ir.IssueSeverity.ERROR,
                    translation_key="station_failed",
                    translation_placeholders={
                        "station": info.name,
                        "error": (state and state.error) or "unknown error",
                    },
                )
                continue
            ir.async_delete_issue(self.hass, DOMAIN, issue)
            self.cameras.async_feed(info, state)
        await self._start_checks()
        self._unsubs.append(self.notifications.async_listen())

    async def _start_checks(self) -> None:
        if await self.engine.vlm_status() is not None:
            self._unsubs.append(
                async_track_time_interval(
                    self.hass,
                    self._check_vlm,
                    timedelta(seconds=30),
                    name="edge_inspector vlm check",
                    cancel_on_shutdown=True,
                )
            )

    async def async_stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()
        self.cameras.async_stop()
        await self.engine.stop()

    async def _check_vlm(self, _now: Any = None) -> None:
        """A repair issue while Ollama lacks the configured model; gone once it has it."""
        try:
            status = await self.engine.vlm_status()
        except EngineConnectionError:
            return  # the engine service is away: its connection says so
        if status is not None and status.model_missing:
            ir.async_create_issue(
                self.hass,
                DOMAIN,
                "ollama_model_missing",
                is_fixable=False,
                severity=ir.IssueSeverity.WARNING,
                translation_key="ollama_model_missing",
                translation_placeholders={"error": status.error or ""},
            )
        else:
            ir.async_delete_issue(self.hass, DOMAIN, "ollama_model_missing")

    async def incident_image(self, incident_id: str, path: str | None) -> bytes | None:
        """An incident's annotated frame (`path` as the incident says, relative to the
        store's images): read from the store, or from the engine service; None when gone."""
        if path is None:
            return None
        try:
            return await self.engine.incident_image(incident_id)
        except (NotFoundError, EngineConnectionError):
            return None  # removed by retention, or the engine service is away

    # -- commands -----------------------------------------------------------------------

    async def async_inspect(
        self, sid: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        """Take a picture from the station's camera and inspect it now."""
        return await self.cameras.async_inspect(sid, part_id=part_id, lot_id=lot_id)

    async def _station_command(
        self, sid: str, command: Callable[[], Awaitable[StationState]]
    ) -> None:
        """A command to a station; its entities then show the state the engine answers."""
        try:
            state = await command()
        except EdgeInspectorError as exc:
            raise station_error(self.stations[sid].name, exc) from exc
        self.coordinators[sid].async_apply(state=state)

    async def async_set_enabled(self, sid: str, enabled: bool) -> None:
        """Pause or resume a station."""
        await self._station_command(sid, lambda: self.engine.set_enabled(sid, enabled))

    async def async_set_threshold(self, sid: str, confidence: float) -> None:
        """Every defect class's confidence threshold of a station."""
        await self._station_command(sid, lambda: self.engine.set_threshold(sid, None, confidence))

    async def async_set_verdict(
        self, incident_id: str, state: IncidentState, *, by: str, note: str | None
    ) -> Incident | None:
        """An operator's verdict on an incident, kept in its audit trail (`extra.feedback`);
        None when this hub has no such incident."""
        try:
            return await self.engine.set_verdict(incident_id, state, by=by, note=note)
        except IncidentNotFoundError:
            return None

    # -- availability -------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """False while an engine service does not answer (always True in-process)."""
        return self.engine.connected

    def is_available(self, sid: str) -> bool:
        """The station runs and its pictures get through (what its entities show)."""
        if not self.is_connected:
            return False
        state = self.coordinators[sid].data.state
        return (
            self.cameras.health[sid].ok
            and state is not None
            and state.error is None
            and self.engine.is_running(sid)
        )
