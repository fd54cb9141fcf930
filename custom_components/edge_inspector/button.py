"""Inspect now: one picture from the camera, inspected at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.components.button import ButtonEntity
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .entity import StationEntity, add_station_entities

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 1


class InspectNowButton(StationEntity, ButtonEntity):
    async def async_press(self) -> None:
        await self.hub.async_inspect(self.station_id)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry,
        async_add_entities,
        lambda hub, coordinator: [InspectNowButton(hub, coordinator, "inspect_now")],
    )
