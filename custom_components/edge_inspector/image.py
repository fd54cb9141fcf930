"""The last annotated defect frame of each station."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.components.image import ImageEntity
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from edge_inspector.events import Incident

from .const import SIGNAL_INCIDENT
from .coordinator import StationCoordinator
from .entity import StationEntity, add_station_entities
from .hub import EdgeInspectorHub

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


class DefectImage(StationEntity, ImageEntity):
    _attr_content_type = "image/jpeg"

    def __init__(self, hub: EdgeInspectorHub, coordinator: StationCoordinator) -> None:
        StationEntity.__init__(self, hub, coordinator, "last_defect_image")
        ImageEntity.__init__(self, hub.hass)
        self._path: str | None = None
        self._incident_id: str | None = None

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        last = await self.hub.engine.last_incident(self.station_id)
        if last is not None:
            self._show(last)
        self.async_on_remove(
            async_dispatcher_connect(
                self.hass, SIGNAL_INCIDENT.format(self.station_id), self._incident
            )
        )

    def _show(self, incident: Incident) -> None:
        self._path = incident.frame_path
        self._incident_id = incident.incident_id
        self._attr_image_last_updated = incident.created_at
        self._attr_extra_state_attributes = {
            "incident_id": incident.incident_id,
            "defect_class": incident.defect_class,
        }

    @callback
    def _incident(self, incident: Incident) -> None:
        if incident.frame_path and incident.frame_path != self._path:
            self._show(incident)
            self.async_write_ha_state()

    async def async_image(self) -> bytes | None:
        if self._path is None or self._incident_id is None:
            return None
        return await self.hub.incident_image(self._incident_id, self._path)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry, async_add_entities, lambda hub, coordinator: [DefectImage(hub, coordinator)]
    )
