"""Notifications: a defect or an action to confirm, sent to a phone with buttons to answer.

With a notify service in the options (a mobile app's), each new incident asks "is it real?"
(buttons: real defect, false alarm) and each action the VLM wants confirmed asks whether to
run it (run it, decline); the buttons' answers come back as `mobile_app_notification_action`
events, recorded as verdicts or decisions by the user who pressed them. Every operator alert
is also a persistent notification in Home Assistant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError

from edge_inspector.errors import EdgeInspectorError, IncidentNotFoundError
from edge_inspector.events import Incident, IncidentState, OperatorAlert
from edge_inspector.sinks import EventSink

from .const import ACTION_PREFIX, CONF_NOTIFY, DOMAIN
from .entry_config import StationInfo

if TYPE_CHECKING:
    from edge_inspector.contract import InspectionEngine

_LOGGER = logging.getLogger(__name__)

EVENT_NOTIFICATION_ACTION = "mobile_app_notification_action"


class Notifications(EventSink):
    """The engine's incidents and alerts as notifications; their buttons' answers."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        engine: InspectionEngine,
        stations: Mapping[str, StationInfo],
    ) -> None:
        self.hass = hass
        self.entry = entry
        self.engine = engine
        self.stations = stations

    @callback
    def async_listen(self) -> Callable[[], None]:
        """Carry out the answers to our notifications' buttons; the callable stops it."""

        async def _on_action(event: Event) -> None:
            action = str(event.data.get("action", ""))
            if action.startswith(f"{ACTION_PREFIX}_"):
                user = event.context.user_id or "notification"
                await self.async_notification_action(action, user)

        return self.hass.bus.async_listen(EVENT_NOTIFICATION_ACTION, _on_action)

    async def _notify(
        self, title: str, message: str, actions: list[tuple[str, str, str]], *, tag: str
    ) -> None:
        """An actionable notification (mobile app) through the configured notify service."""
        service = self.entry.options.get(CONF_NOTIFY)
        if not service:
            return
        domain, name = service.split(".", 1)
        data = {
            "title": title,
            "message": message,
            "data": {
                "tag": tag,
                "actions": [
                    {"action": f"{ACTION_PREFIX}_{kind}|{ref}", "title": label}
                    for kind, ref, label in actions
                ],
            },
        }
        try:
            await self.hass.services.async_call(domain, name, data, blocking=False)
        except HomeAssistantError as exc:
            _LOGGER.warning("cannot notify through %s: %s", service, exc)

    async def async_notification_action(self, action: str, user: str) -> None:
        """A button of one of our notifications was pressed."""
        kind, _, ref = action.removeprefix(f"{ACTION_PREFIX}_").partition("|")

        if kind in ("CONFIRM", "REJECT"):
            state = IncidentState.CONFIRMED if kind == "CONFIRM" else IncidentState.REJECTED
            try:
                await self.engine.set_verdict(ref, state, by=user, note="notification")
            except IncidentNotFoundError:
                pass  # not (or no longer) this hub's incident
            except EdgeInspectorError as exc:  # the engine stopped meanwhile (an unload)
                _LOGGER.warning("notification action %s not recorded: %s", action, exc)
        elif kind in ("APPROVE", "DECLINE"):
            incident_id, _, request_id = ref.partition("|")
            try:
                await self.engine.resolve_action(
                    incident_id, request_id, approve=kind == "APPROVE", by=user
                )
            except EdgeInspectorError as exc:
                _LOGGER.warning("notification action %s refused: %s", action, exc)

    # -- EventSink ----------------------------------------------------------------------

    async def on_incident(self, incident: Incident) -> None:
        info = self.stations.get(incident.station_id)
        if info is None:
            return
        await self._notify(
            f"{info.name}: {incident.defect_class} ({incident.confidence:.0%})",
            f"Defect on {info.name}"
            + (f", part {incident.part_id}" if incident.part_id else "")
            + ". Is it real?",
            [
                ("CONFIRM", incident.incident_id, "Real defect"),
                ("REJECT", incident.incident_id, "False alarm"),
            ],
            tag=incident.incident_id,
        )

    async def on_alert(self, alert: OperatorAlert) -> None:
        info = self.stations.get(alert.station_id)
        title = f"Edge Inspector: {info.name if info else alert.station_id}"
        from homeassistant.components import persistent_notification

        message = alert.message
        if alert.kind == "confirm_request":
            message += (
                f"\n\nAction `{alert.action}` with {alert.arguments}. To run it, call "
                f"`{DOMAIN}.confirm_action` with incident_id `{alert.incident_id}`, "
                f"request_id `{alert.alert_id}` and approve true (or false to decline)."
            )
        persistent_notification.async_create(
            self.hass, message, title=title, notification_id=f"{DOMAIN}_{alert.alert_id}"
        )
        if alert.kind == "confirm_request":
            ref = f"{alert.incident_id}|{alert.alert_id}"
            await self._notify(
                title,
                f"{alert.message} ({alert.action})",
                [("APPROVE", ref, "Run it"), ("DECLINE", ref, "Decline")],
                tag=alert.alert_id,
            )
