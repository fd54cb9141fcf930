"""The base of every station entity: one device per station, updates pushed by the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity import Entity
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .const import DOMAIN, SIGNAL_STATE
from .hub import EdgeInspectorHub, StationRuntime

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry


class StationEntity(Entity):
    """An entity of one inspection station."""

    _attr_has_entity_name = True
    _attr_should_poll = False

    def __init__(self, hub: EdgeInspectorHub, runtime: StationRuntime, key: str) -> None:
        self.hub = hub
        self.runtime = runtime
        self._attr_translation_key = key
        self._attr_unique_id = f"{hub.entry.entry_id}_{runtime.subentry_id}_{key}"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, runtime.subentry_id)},
            name=runtime.name,
            manufacturer="Edge Inspector",
            model=runtime.model_name,
            suggested_area=runtime.line,
        )

    @property
    def station_id(self) -> str:
        return self.runtime.station_id

    @property
    def available(self) -> bool:
        return self.hub.is_available(self.station_id)

    async def async_added_to_hass(self) -> None:
        self.async_on_remove(
            async_dispatcher_connect(
                self.hass, SIGNAL_STATE.format(self.station_id), self._handle_update
            )
        )

    @callback
    def _handle_update(self) -> None:
        self.async_write_ha_state()


def add_station_entities(
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
    make: Callable[[EdgeInspectorHub, StationRuntime], Iterable[Entity]],
) -> None:
    """Add one platform's entities for every station, each under its own subentry."""
    hub = entry.runtime_data
    for runtime in hub.stations.values():
        async_add_entities(
            list(make(hub, runtime)),
            config_subentry_id=None if runtime.remote else runtime.subentry_id,
        )


__all__ = ["HomeAssistant", "StationEntity", "add_station_entities"]
