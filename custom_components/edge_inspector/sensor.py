"""Counters and quality figures of each station, with state classes for long-term statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import PERCENTAGE, EntityCategory, UnitOfTime
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.typing import StateType

from .entity import StationEntity, add_station_entities
from .hub import EdgeInspectorHub, StationRuntime

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


@dataclass(frozen=True, kw_only=True)
class StationSensorDescription(SensorEntityDescription):
    value: Callable[[StationRuntime], StateType]


def _rate(runtime: StationRuntime) -> StateType:
    state = runtime.state
    if state is None or not state.inspections:
        return None
    return round(100 * state.defects / state.inspections, 2)


def _yield(runtime: StationRuntime) -> StateType:
    rate = _rate(runtime)
    return None if rate is None else round(100 - float(rate), 2)


def _percent(value: float | None) -> StateType:
    return None if value is None else round(100 * value, 2)


SENSORS: tuple[StationSensorDescription, ...] = (
    StationSensorDescription(
        key="false_reject_rate",
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        value=lambda r: _percent(r.feedback.false_reject_rate) if r.feedback else None,
    ),
    StationSensorDescription(
        key="false_accept_rate",
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        value=lambda r: _percent(r.feedback.false_accept_rate) if r.feedback else None,
    ),
    StationSensorDescription(
        key="inspections",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value=lambda r: r.state.inspections if r.state else None,
    ),
    StationSensorDescription(
        key="defects",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value=lambda r: r.state.defects if r.state else None,
    ),
    StationSensorDescription(
        key="incidents",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value=lambda r: r.state.incidents if r.state else None,
    ),
    StationSensorDescription(
        key="defect_rate",
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        value=_rate,
    ),
    StationSensorDescription(
        key="yield",
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        value=_yield,
    ),
    StationSensorDescription(
        key="last_defect_class",
        value=lambda r: r.state.last_defect_class if r.state else None,
    ),
    StationSensorDescription(
        key="latency",
        native_unit_of_measurement=UnitOfTime.MILLISECONDS,
        device_class=SensorDeviceClass.DURATION,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=0,
        entity_category=EntityCategory.DIAGNOSTIC,
        entity_registry_enabled_default=False,
        value=lambda r: (
            round(r.state.last_latency_ms, 1)
            if r.state and r.state.last_latency_ms is not None
            else None
        ),
    ),
)


class StationSensor(StationEntity, SensorEntity):
    entity_description: StationSensorDescription

    def __init__(
        self,
        hub: EdgeInspectorHub,
        runtime: StationRuntime,
        description: StationSensorDescription,
    ) -> None:
        super().__init__(hub, runtime, description.key)
        self.entity_description = description

    @property
    def native_value(self) -> StateType:
        return self.entity_description.value(self.runtime)


class ClassIncidentsSensor(StationEntity, SensorEntity):
    """Incidents of one defect class, all time: with one per class, a Pareto view."""

    _attr_state_class = SensorStateClass.TOTAL_INCREASING

    def __init__(self, hub: EdgeInspectorHub, runtime: StationRuntime, defect_class: str) -> None:
        super().__init__(hub, runtime, "incidents_by_class")
        self._class = defect_class
        self._attr_unique_id = f"{self._attr_unique_id}_{defect_class}"
        self._attr_translation_placeholders = {"defect_class": defect_class}

    @property
    def native_value(self) -> StateType:
        return self.runtime.class_counts.get(self._class, 0)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry,
        async_add_entities,
        lambda hub, runtime: [
            *(StationSensor(hub, runtime, d) for d in SENSORS),
            *(ClassIncidentsSensor(hub, runtime, c) for c in runtime.defects),
        ],
    )
