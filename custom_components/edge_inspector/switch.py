"""Inspection enabled: pause a station without removing it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeassistant.components.switch import SwitchEntity
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .entity import StationEntity, add_station_entities

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


class InspectionSwitch(StationEntity, SwitchEntity):
    _attr_entity_category = EntityCategory.CONFIG

    @property
    def is_on(self) -> bool | None:
        state = self.snapshot.state
        return None if state is None else state.enabled

    async def async_turn_on(self, **kwargs: Any) -> None:
        await self.hub.async_set_enabled(self.station_id, True)

    async def async_turn_off(self, **kwargs: Any) -> None:
        await self.hub.async_set_enabled(self.station_id, False)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry,
        async_add_entities,
        lambda hub, coordinator: [InspectionSwitch(hub, coordinator, "inspection_enabled")],
    )
