"""Defect present: on while the station's last inspection failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .entity import StationEntity, add_station_entities

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


class DefectBinarySensor(StationEntity, BinarySensorEntity):
    _attr_device_class = BinarySensorDeviceClass.PROBLEM

    @property
    def is_on(self) -> bool | None:
        state = self.runtime.state
        return None if state is None else state.defect_present


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry, async_add_entities, lambda hub, rt: [DefectBinarySensor(hub, rt, "defect")]
    )
