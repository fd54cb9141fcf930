"""Confidence threshold: what every defect class of the station needs to count."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.components.number import NumberEntity, NumberMode
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .entity import StationEntity, add_station_entities

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


class ThresholdNumber(StationEntity, NumberEntity):
    _attr_entity_category = EntityCategory.CONFIG
    _attr_native_min_value = 0.05
    _attr_native_max_value = 0.95
    _attr_native_step = 0.05
    _attr_mode = NumberMode.SLIDER

    @property
    def native_value(self) -> float | None:
        state = self.snapshot.state
        if state is None or not state.thresholds:
            return None
        return min(state.thresholds.values())

    async def async_set_native_value(self, value: float) -> None:
        await self.hub.async_set_threshold(self.station_id, value)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry,
        async_add_entities,
        lambda hub, coordinator: [ThresholdNumber(hub, coordinator, "confidence_threshold")],
    )
