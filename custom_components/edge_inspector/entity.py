"""The base of every station entity: one device per station, its state pushed by the engine
through the station's coordinator (`coordinator.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant
from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.entity import Entity
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .coordinator import StationCoordinator, StationSnapshot
from .entry_config import StationInfo
from .hub import EdgeInspectorHub

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry


class StationEntity(CoordinatorEntity[StationCoordinator]):
    """An entity of one inspection station."""

    _attr_has_entity_name = True

    def __init__(self, hub: EdgeInspectorHub, coordinator: StationCoordinator, key: str) -> None:
        super().__init__(coordinator)
        self.hub = hub
        info = coordinator.info
        self._attr_translation_key = key
        self._attr_unique_id = f"{hub.entry.entry_id}_{info.subentry_id}_{key}"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, info.subentry_id)},
            name=info.name,
            manufacturer="Edge Inspector",
            model=info.model_name,
            suggested_area=info.line,
        )

    @property
    def info(self) -> StationInfo:
        return self.coordinator.info

    @property
    def snapshot(self) -> StationSnapshot:
        """What the engine last said of the station."""
        return self.coordinator.data

    @property
    def station_id(self) -> str:
        return self.info.station_id

    @property
    def available(self) -> bool:
        """The engine (service) answers, the station runs and its pictures get through."""
        return super().available and self.hub.is_available(self.station_id)


def add_station_entities(
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
    make: Callable[[EdgeInspectorHub, StationCoordinator], Iterable[Entity]],
) -> None:
    """Add one platform's entities for every station, each under its own subentry."""
    hub = entry.runtime_data
    for coordinator in hub.coordinators.values():
        info = coordinator.info
        async_add_entities(
            list(make(hub, coordinator)),
            config_subentry_id=None if info.remote else info.subentry_id,
        )


__all__ = ["HomeAssistant", "StationEntity", "add_station_entities"]
