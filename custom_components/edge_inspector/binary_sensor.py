"""Defect present: on while the station's last inspection failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import StationCoordinator
from .entity import StationEntity, add_station_entities

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


class DefectBinarySensor(StationEntity, BinarySensorEntity):
    _attr_device_class = BinarySensorDeviceClass.PROBLEM

    @property
    def is_on(self) -> bool | None:
        state = self.snapshot.state
        return None if state is None else state.defect_present


class OutOfControlBinarySensor(StationEntity, BinarySensorEntity):
    """On when the last hour's defect rate is above the p-chart's upper control limit."""

    _attr_device_class = BinarySensorDeviceClass.PROBLEM

    @property
    def is_on(self) -> bool | None:
        quality = self.snapshot.quality
        chart = quality.p_chart if quality else None
        return None if chart is None else chart.out_of_control

    @property
    def extra_state_attributes(self) -> dict[str, float | int] | None:
        quality = self.snapshot.quality
        chart = quality.p_chart if quality else None
        if chart is None:
            return None
        return {
            "center_line": chart.p_bar,
            "upper_control_limit": chart.ucl,
            "lower_control_limit": chart.lcl,
            "defect_rate": chart.rate,
            "subgroup_size": chart.n,
        }


class PlcBinarySensor(StationEntity, BinarySensorEntity):
    """On while the engine is connected to the station's PLC (a station with a PLC only)."""

    _attr_device_class = BinarySensorDeviceClass.CONNECTIVITY
    _attr_entity_category = EntityCategory.DIAGNOSTIC

    @property
    def is_on(self) -> bool | None:
        state = self.snapshot.state
        return None if state is None or state.plc is None else state.plc == "connected"

    @property
    def extra_state_attributes(self) -> dict[str, str] | None:
        state = self.snapshot.state
        return {"error": state.plc_error} if state is not None and state.plc_error else None


def _has_plc(coordinator: StationCoordinator) -> bool:
    state = coordinator.data.state
    return state is not None and bool(state.plc)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry,
        async_add_entities,
        lambda hub, coordinator: [
            DefectBinarySensor(hub, coordinator, "defect"),
            OutOfControlBinarySensor(hub, coordinator, "out_of_control"),
            # an engine station wired to a PLC (its state says so when Home Assistant connects)
            *([PlcBinarySensor(hub, coordinator, "plc")] if _has_plc(coordinator) else []),
        ],
    )
