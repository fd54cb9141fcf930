"""Publish the engine's events through Home Assistant's own MQTT integration.

With the option on, a Node-RED flow written for the standalone engine works unchanged: defects,
incident updates, alerts, retained station states and quality figures appear under the same
topics (`<base>/<station>/defect`, `.../incident`, `.../alert`, `.../state`, `.../image`,
`.../kpi`, `<base>/quality`, `<base>/shift_report`). Home Assistant discovery is not published:
the integration's own entities are already there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError

from edge_inspector.events import Incident, OperatorAlert, QualityReport, StationState
from edge_inspector.mqtt.bridge import state_payload
from edge_inspector.mqtt.topics import Topics
from edge_inspector.sinks import EventSink

_LOGGER = logging.getLogger(__name__)


class HaMqttPublisher(EventSink):
    """An engine sink that publishes through `mqtt.async_publish`."""

    def __init__(
        self,
        hass: HomeAssistant,
        base_topic: str,
        read_image: Callable[[str, str | None], Awaitable[bytes | None]],
    ) -> None:
        self.hass = hass
        self.topics = Topics(base_topic)
        self._read_image = read_image  # (incident id, stored path): the hub's incident_image
        self._failing = False

    async def _publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        from homeassistant.components import mqtt

        try:
            await mqtt.async_publish(self.hass, topic, payload, qos=qos, retain=retain)
        except HomeAssistantError as exc:
            if not self._failing:
                _LOGGER.warning("cannot publish through Home Assistant's MQTT: %s", exc)
            self._failing = True
            return
        if self._failing:
            _LOGGER.info("publishing through Home Assistant's MQTT again")
            self._failing = False

    async def on_incident(self, incident: Incident) -> None:
        await self._publish(
            self.topics.defect(incident.station_id),
            incident.model_dump_json().encode(),
            qos=1,
            retain=False,
        )
        image = await self._read_image(incident.incident_id, incident.frame_path)
        if image is not None:
            await self._publish(self.topics.image(incident.station_id), image, qos=0, retain=True)

    async def on_incident_update(self, incident: Incident) -> None:
        await self._publish(
            self.topics.incident(incident.station_id),
            incident.model_dump_json().encode(),
            qos=1,
            retain=False,
        )

    async def on_alert(self, alert: OperatorAlert) -> None:
        await self._publish(
            self.topics.alert(alert.station_id),
            alert.model_dump_json().encode(),
            qos=1,
            retain=False,
        )

    async def on_station_state(self, state: StationState) -> None:
        await self._publish(
            self.topics.state(state.station_id), state_payload(state), qos=1, retain=True
        )

    async def on_quality(self, report: QualityReport) -> None:
        for row in report.stations:
            if row.station_id is not None:
                await self._publish(
                    self.topics.kpi(row.station_id),
                    row.model_dump_json().encode(),
                    qos=1,
                    retain=True,
                )
        await self._publish(
            self.topics.quality, report.model_dump_json().encode(), qos=1, retain=True
        )

    async def on_shift_report(self, report: QualityReport) -> None:
        await self._publish(
            self.topics.shift_report, report.model_dump_json().encode(), qos=1, retain=True
        )
