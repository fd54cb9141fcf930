"""Counters and quality figures of each station, with state classes for long-term statistics,
and (with a VLM) its incidents waiting for the model."""

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

from edge_inspector.events import StationQuality, VlmVerdict

from .coordinator import StationCoordinator, StationSnapshot
from .entity import StationEntity, add_station_entities
from .hub import EdgeInspectorHub

if TYPE_CHECKING:
    from . import EdgeInspectorConfigEntry

PARALLEL_UPDATES = 0


@dataclass(frozen=True, kw_only=True)
class StationSensorDescription(SensorEntityDescription):
    value: Callable[[StationSnapshot], StateType]


def _last_verdict(snapshot: StationSnapshot) -> StateType:
    vlm = snapshot.last_incident.vlm if snapshot.last_incident else None
    return str(vlm.verdict) if vlm and vlm.verdict else None


def _percent(
    key: str, figure: Callable[[StationQuality], float | None]
) -> StationSensorDescription:
    """A percentage of the engine's published figures (over `quality.period`: this shift)."""
    return StationSensorDescription(
        key=key,
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        value=lambda snapshot: None if snapshot.quality is None else figure(snapshot.quality),
    )


SENSORS: tuple[StationSensorDescription, ...] = (
    _percent("false_reject_rate", lambda q: q.false_reject_rate_percent),
    _percent("false_accept_rate", lambda q: q.false_accept_rate_percent),
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
    _percent("defect_rate", lambda q: q.defect_rate_percent),
    _percent("yield", lambda q: q.yield_percent),
    StationSensorDescription(
        key="last_defect_class",
        value=lambda r: r.state.last_defect_class if r.state else None,
    ),
    StationSensorDescription(  # the VLM's second opinion on the last incident
        key="last_verdict",
        device_class=SensorDeviceClass.ENUM,
        options=[str(v) for v in VlmVerdict],
        value=_last_verdict,
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


def _oldest_wait(snapshot: StationSnapshot) -> StateType:
    state = snapshot.state
    if state is None or state.vlm_queue is None:
        return None
    return state.vlm_oldest_pending_s or 0  # the VLM is on and none waits


# Only for stations whose engine has a VLM (their state says how many incidents wait for it).
VLM_SENSORS: tuple[StationSensorDescription, ...] = (
    StationSensorDescription(
        key="vlm_queue",
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda r: r.state.vlm_queue if r.state else None,
    ),
    StationSensorDescription(
        key="vlm_oldest_pending",
        native_unit_of_measurement=UnitOfTime.SECONDS,
        device_class=SensorDeviceClass.DURATION,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=0,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=_oldest_wait,
    ),
)


def _has_vlm(coordinator: StationCoordinator) -> bool:
    state = coordinator.data.state
    return state is not None and state.vlm_queue is not None


class StationSensor(StationEntity, SensorEntity):
    entity_description: StationSensorDescription

    def __init__(
        self,
        hub: EdgeInspectorHub,
        coordinator: StationCoordinator,
        description: StationSensorDescription,
    ) -> None:
        super().__init__(hub, coordinator, description.key)
        self.entity_description = description

    @property
    def native_value(self) -> StateType:
        return self.entity_description.value(self.snapshot)


class ClassIncidentsSensor(StationEntity, SensorEntity):
    """Incidents of one defect class, all time: with one per class, a Pareto view."""

    _attr_state_class = SensorStateClass.TOTAL_INCREASING

    def __init__(
        self, hub: EdgeInspectorHub, coordinator: StationCoordinator, defect_class: str
    ) -> None:
        super().__init__(hub, coordinator, "incidents_by_class")
        self._class = defect_class
        self._attr_unique_id = f"{self._attr_unique_id}_{defect_class}"
        self._attr_translation_placeholders = {"defect_class": defect_class}

    @property
    def native_value(self) -> StateType:
        return self.snapshot.class_counts.get(self._class, 0)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: EdgeInspectorConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    add_station_entities(
        entry,
        async_add_entities,
        lambda hub, coordinator: [
            *(StationSensor(hub, coordinator, d) for d in SENSORS),
            *(StationSensor(hub, coordinator, d) for d in VLM_SENSORS if _has_vlm(coordinator)),
            *(ClassIncidentsSensor(hub, coordinator, c) for c in coordinator.info.defects),
        ],
    )
