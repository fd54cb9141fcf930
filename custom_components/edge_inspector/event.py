"""Defect events: one per incident, typed by defect class, updated when the VLM answers (with
its verdict on the detector's call)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.components.event import EventEntity
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from edge_inspector.events import Incident, VlmStatus

from .const import SIGNAL_INCIDENT
from .coordinator import StationCoordinator
from .entity import StationEntity, add_station_entities
from .hub import EdgeInspectorHub

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


class DefectEvent(StationEntity, EventEntity):
    def __init__(self, hub: EdgeInspectorHub, coordinator: StationCoordinator) -> None:
        super().__init__(hub, coordinator, "defect_event")
        self._attr_event_types = list(coordinator.info.defects)
        self._told: dict[str, bool] = {}  # incidents fired, and whether with the VLM's answer

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(
            async_dispatcher_connect(
                self.hass, SIGNAL_INCIDENT.format(self.station_id), self._incident
            )
        )

    @callback
    def _incident(self, incident: Incident) -> None:
        vlm = incident.vlm
        attributes = {
            "incident_id": incident.incident_id,
            "confidence": round(incident.confidence, 4),
            "part_id": incident.part_id,
            "vlm_status": str(vlm.status) if vlm else None,
            "vlm_verdict": str(vlm.verdict) if vlm and vlm.verdict else None,
        }
        if vlm and vlm.classification:
            attributes["vlm_defect_type"] = vlm.classification.defect_type
            attributes["vlm_severity"] = str(vlm.classification.severity)
            attributes["vlm_description"] = vlm.classification.description
        if vlm and vlm.report:
            attributes["vlm_summary"] = vlm.report.summary
        # It fires when the defect is found (vlm_status pending, or None with the VLM off)
        # and once more when the VLM has answered for the latest incident; a station that
        # holds its defects back for the VLM tells them answered, and it fires once.
        ident = incident.incident_id
        told = self._told.get(ident)
        latest = self.state_attributes.get("incident_id") == ident
        answered = vlm is not None and vlm.status not in (VlmStatus.PENDING, VlmStatus.UNAVAILABLE)
        if told is not None and not (latest and answered and not told):
            return
        if told is None and len(self._told) >= 1000:
            self._told.clear()
        self._told[ident] = answered
        if incident.defect_class in self.event_types:
            self._trigger_event(incident.defect_class, attributes)
            self.async_write_ha_state()


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry, async_add_entities, lambda hub, coordinator: [DefectEvent(hub, coordinator)]
    )
