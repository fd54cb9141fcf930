"""The engine's events as Home Assistant state: one coordinator per station, and bus events.

`StationEvents` is the engine's sink (`EventSink`) for what entities and automations see. Each
event becomes a new `StationSnapshot` of its station (the engine's state, the last inspection,
the last incident, incidents by class, the published quality figures) handed to that station's
`StationCoordinator`, whose entities (`entity.StationEntity`, a `CoordinatorEntity`) then write
their state; defects, incident updates, missed defects, shift reports and alerts also go on the
bus (`edge_inspector_defect`, `_incident`, `_missed_defect`, `_shift_report`, `_alert`).

Why Home Assistant's `DataUpdateCoordinator`, though nothing is fetched: the engine pushes, and
a coordinator with `update_interval=None` fed with `async_set_updated_data` is the push model
that class supports. On both supported releases (2026.2 and 2026.11) such a coordinator never
schedules a refresh (`_schedule_refresh` returns at once without an interval), and
`async_set_updated_data` stores the data, marks it a success and calls the listeners at once,
in the event loop; the config entry is passed explicitly (no ContextVar fallback, no
deprecation report) and shuts the coordinator down when the entry unloads. A refresh asked for
anyway (`homeassistant.update_entity`) answers the snapshot held: the engine has already told
everything, so none can fail and `last_update_success` stays true. What we would write
ourselves (listeners, the entities' base) is what `CoordinatorEntity` already is.

A snapshot is immutable (a frozen dataclass of the engine's frozen models, the counts behind a
read-only mapping): an event replaces it, entities and answers read one consistent picture.
Two things stay out of it. Whether a station's pictures get through is the camera feed's
(`camera_feed.py`), and whether an engine service answers is the engine's: when either
changes, `async_availability_changed` has the entities look again. Incidents themselves are
a stream, not state (an update of an older incident still matters to the event entity), so
they reach the event and image entities by dispatcher signal (`SIGNAL_INCIDENT`), as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator

from edge_inspector.events import (
    Incident,
    InspectionResult,
    OperatorAlert,
    QualityReport,
    StationQuality,
    StationState,
)
from edge_inspector.sinks import EventSink

from .const import (
    DOMAIN,
    EVENT_DEFECT,
    EVENT_INCIDENT,
    EVENT_MISSED_DEFECT,
    EVENT_SHIFT_REPORT,
    SIGNAL_INCIDENT,
)
from .devices import station_device
from .entry_config import StationInfo

if TYPE_CHECKING:
    from edge_inspector.contract import InspectionEngine

_LOGGER = logging.getLogger(__name__)


def _frozen_counts(counts: Mapping[str, int] | None = None) -> Mapping[str, int]:
    return MappingProxyType(dict(counts or {}))


@dataclass(frozen=True, slots=True)
class StationSnapshot:
    """What the engine last said of one station."""

    state: StationState | None = None
    last_result: InspectionResult | None = None
    last_incident: Incident | None = None
    class_counts: Mapping[str, int] = field(default_factory=_frozen_counts)  # all time
    quality: StationQuality | None = None  # the engine's published figures


class StationCoordinator(DataUpdateCoordinator[StationSnapshot]):
    """One station's snapshot and the entities that show it (pushed, never polled)."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry, info: StationInfo) -> None:
        super().__init__(
            hass,
            _LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} {info.name}",
            update_interval=None,
        )
        self.info = info
        self.data = StationSnapshot()

    async def _async_update_data(self) -> StationSnapshot:
        return self.data  # the engine pushes: there is nothing to fetch

    @callback
    def async_apply(self, **changes: Any) -> None:
        """A new snapshot with these fields changed; the station's entities show it."""
        self.async_set_updated_data(replace(self.data, **changes))


class StationEvents(EventSink):
    """The engine's events, turned into the stations' snapshots and into bus events."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        self.hass = hass
        self.entry = entry
        self.coordinators: dict[str, StationCoordinator] = {}

    def add_station(self, info: StationInfo) -> None:
        self.coordinators[info.station_id] = StationCoordinator(self.hass, self.entry, info)

    async def async_load(self, engine: InspectionEngine) -> None:
        """What the engine has now (once started): each station's state and incidents by
        class, and its published figures."""
        states = {state.station_id: state for state in engine.states()}
        for sid, coordinator in self.coordinators.items():
            counts = await engine.counts_by_class(station_id=sid)
            coordinator.async_apply(
                state=states.get(sid),
                class_counts=_frozen_counts(
                    dict.fromkeys(coordinator.info.defects, 0)
                    | {c.defect_class: c.count for c in counts}
                ),
            )
        if (report := engine.latest_quality()) is not None:
            await self.on_quality(report)

    @callback
    def async_availability_changed(self, station_id: str | None = None) -> None:
        """A station's entities (every station's with None) look again whether they are
        available: its camera, or the engine service, failed or is back."""
        for sid, coordinator in self.coordinators.items():
            if station_id in (None, sid):
                coordinator.async_update_listeners()

    def _payload(self, incident: Incident, info: StationInfo) -> dict[str, Any]:
        vlm = incident.vlm
        device = station_device(self.hass, self.entry.entry_id, info.subentry_id)
        return {
            "device_id": device.id if device else None,
            "entry_id": self.entry.entry_id,
            "station_id": incident.station_id,
            "station": info.name,
            "camera_entity_id": info.camera_entity_id,
            "incident_id": incident.incident_id,
            "defect_class": incident.defect_class,
            "confidence": round(incident.confidence, 4),
            "part_id": incident.part_id,
            "lot_id": incident.lot_id,
            "state": str(incident.state),
            "frame_path": incident.frame_path,
            "created_at": incident.created_at.isoformat(),
            "vlm_status": str(vlm.status) if vlm else None,
            # the model's second opinion on the detector's call (None: not given yet)
            "vlm_verdict": str(vlm.verdict) if vlm and vlm.verdict else None,
            "vlm_classification": vlm.classification.model_dump(mode="json")
            if vlm and vlm.classification
            else None,
            "vlm_summary": vlm.report.summary if vlm and vlm.report else None,
        }

    # -- EventSink ----------------------------------------------------------------------

    async def on_inspection(self, result: InspectionResult) -> None:
        if (coordinator := self.coordinators.get(result.station_id)) is not None:
            coordinator.async_apply(last_result=result)

    async def on_station_state(self, state: StationState) -> None:
        if (coordinator := self.coordinators.get(state.station_id)) is not None:
            coordinator.async_apply(state=state)

    async def on_incident(self, incident: Incident) -> None:
        coordinator = self.coordinators.get(incident.station_id)
        if coordinator is None:
            return
        counts = dict(coordinator.data.class_counts)
        counts[incident.defect_class] = counts.get(incident.defect_class, 0) + 1
        self.hass.bus.async_fire(EVENT_DEFECT, self._payload(incident, coordinator.info))
        async_dispatcher_send(self.hass, SIGNAL_INCIDENT.format(incident.station_id), incident)
        coordinator.async_apply(last_incident=incident, class_counts=_frozen_counts(counts))

    async def on_incident_update(self, incident: Incident) -> None:
        coordinator = self.coordinators.get(incident.station_id)
        if coordinator is None:
            return
        last = coordinator.data.last_incident
        if last is not None and last.incident_id == incident.incident_id:
            coordinator.async_apply(last_incident=incident)
        self.hass.bus.async_fire(EVENT_INCIDENT, self._payload(incident, coordinator.info))
        async_dispatcher_send(self.hass, SIGNAL_INCIDENT.format(incident.station_id), incident)

    async def on_missed_defect(self, incident: Incident) -> None:
        coordinator = self.coordinators.get(incident.station_id)
        if coordinator is None:
            return
        # its own bus event: not a detection, so not the defect event entity's, nor a
        # notification asking whether it is real (a person has said so)
        self.hass.bus.async_fire(EVENT_MISSED_DEFECT, self._payload(incident, coordinator.info))
        coordinator.async_update_listeners()

    async def on_quality(self, report: QualityReport) -> None:
        for row in report.stations:
            if (coordinator := self.coordinators.get(row.station_id or "")) is not None:
                coordinator.async_apply(quality=row)

    async def on_shift_report(self, report: QualityReport) -> None:
        self.hass.bus.async_fire(EVENT_SHIFT_REPORT, report.model_dump(mode="json"))

    async def on_alert(self, alert: OperatorAlert) -> None:
        self.hass.bus.async_fire(f"{DOMAIN}_alert", alert.model_dump(mode="json"))

    async def on_connection(self, connected: bool) -> None:
        self.async_availability_changed()
