"""The engine inside Home Assistant: stations fed from camera entities, events out to HA.

The engine runs in Home Assistant's process and event loop; YOLO runs on the engine's own
inference thread and every blocking step (decoding, SQLite, image files) on executors, so the
event loop never waits for a model. Each station is a config subentry: a camera entity, a model
file and its rules. Frames come from `camera.async_get_image` on the station's interval (and on
demand); what the engine produces reaches entities through dispatcher signals and automations
through bus events.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from homeassistant.components import camera
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.util import dt as dt_util

from edge_inspector.config import ActionConfig, EngineConfig, ServiceActionTarget
from edge_inspector.errors import (
    EdgeInspectorError,
    EngineConnectionError,
    ImageDecodeError,
    IncidentNotFoundError,
    ModelError,
    NotFoundError,
)
from edge_inspector.events import (
    Incident,
    IncidentState,
    InspectionResult,
    OperatorAlert,
    StationState,
)
from edge_inspector.sinks import EventSink
from edge_inspector.store import FeedbackCounts
from edge_inspector.tools.actions import ActionContext, ActionError

from .const import (
    ACTION_PREFIX,
    CONF_CAMERA,
    CONF_CAMERAS,
    CONF_DEFECTS,
    CONF_INTERVAL,
    CONF_LINE,
    CONF_MODEL_PATH,
    CONF_MQTT_BASE_TOPIC,
    CONF_MQTT_PUBLISH,
    CONF_NOTIFY,
    DEFAULT_INTERVAL,
    DOMAIN,
    EVENT_DEFECT,
    EVENT_INCIDENT,
    EVENT_MISSED_DEFECT,
    SIGNAL_INCIDENT,
    SIGNAL_STATE,
    SUBENTRY_STATION,
)
from .devices import station_device
from .entry_config import model_path, parse_cameras, station_id
from .spc import BASELINE, SUBGROUP, PChart, p_chart
from .validation import vol

if TYPE_CHECKING:
    from edge_inspector.contract import InspectionEngine

_LOGGER = logging.getLogger(__name__)


def _station_error(station: str, exc: Exception) -> HomeAssistantError:
    """What a station's command or inspection failed with, for the person who asked."""
    return HomeAssistantError(
        translation_domain=DOMAIN,
        translation_key="station_error",
        translation_placeholders={"station": station, "error": str(exc)},
    )


@dataclass
class StationRuntime:
    """What Home Assistant knows of one station beyond the engine's own state."""

    station_id: str
    subentry_id: str
    name: str
    camera_entity_id: str
    interval: float
    defects: tuple[str, ...]
    line: str | None = None
    model_name: str | None = None
    remote: bool = False  # a station of an engine service (no subentry; stations live there)
    state: StationState | None = None
    last_result: InspectionResult | None = None
    last_incident: Incident | None = None
    camera_error: str | None = None
    engine_error: str | None = None
    grabbing: bool = False
    class_counts: dict[str, int] = field(default_factory=dict)
    chart: PChart | None = None
    feedback: FeedbackCounts | None = None


class HaServicePort:
    """`service` action targets: a Home Assistant service (or script) with its fixed data.

    The fixed data names what is acted on, so the model never picks the entity. The model's
    arguments (checked against the action's schema) are kept on the incident, and passed as
    service data only with `pass_arguments: true` (a script with fields); the fixed data wins."""

    def __init__(self, hass: HomeAssistant) -> None:
        self.hass = hass

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str:
        target = action.target
        assert isinstance(target, ServiceActionTarget)
        domain, service = target.service.split(".", 1)
        if not self.hass.services.has_service(domain, service):
            raise ActionError(f"Home Assistant has no service {target.service}")
        try:
            data = {**arguments, **target.data} if target.pass_arguments else dict(target.data)
            await self.hass.services.async_call(domain, service, data, blocking=True)
        except (HomeAssistantError, vol.Invalid) as exc:
            raise ActionError(f"{target.service} failed: {exc}") from exc
        return f"called {target.service}"


class EdgeInspectorHub(EventSink):
    """The entry's runtime data: the engine and its stations."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        engine: InspectionEngine,
        config: EngineConfig | None = None,
    ) -> None:
        """`engine`: in this process (with `config`, the entry's translation) or a service."""
        self.hass = hass
        self.entry = entry
        self.remote = config is None
        # the engine's configuration in process; a service's stations come from it
        self.config = config or EngineConfig.model_validate(
            {"stations": []}, context={"allow_no_stations": True}
        )
        self.engine = engine
        # `service` action targets: run here, for the engine in process or the service
        engine.set_service_port(HaServicePort(hass))
        engine.add_sink(self)
        if entry.options.get(CONF_MQTT_PUBLISH):
            from .mqtt_publish import HaMqttPublisher

            engine.add_sink(
                HaMqttPublisher(
                    hass,
                    entry.options.get(CONF_MQTT_BASE_TOPIC) or DOMAIN,
                    self.incident_image,
                )
            )
        self.stations: dict[str, StationRuntime] = {}
        for subentry in entry.subentries.values():
            if subentry.subentry_type != SUBENTRY_STATION:
                continue
            sid = station_id(subentry)
            self.stations[sid] = StationRuntime(
                station_id=sid,
                subentry_id=subentry.subentry_id,
                name=subentry.title,
                camera_entity_id=subentry.data[CONF_CAMERA],
                interval=float(subentry.data.get(CONF_INTERVAL, DEFAULT_INTERVAL)),
                defects=tuple(sorted(subentry.data[CONF_DEFECTS])),
                line=subentry.data.get(CONF_LINE) or None,
                model_name=model_path(subentry.data.get(CONF_MODEL_PATH)).name,
            )
        self._unsubs: list[Callable[[], None]] = []
        self._reloading = False

    # -- life ---------------------------------------------------------------------------

    def _remote_stations(self) -> None:
        """The engine service's stations, each a device; cameras mapped in the options feed
        its `push` stations."""
        cameras = parse_cameras(self.entry.options.get(CONF_CAMERAS, ""))
        interval = float(self.entry.options.get(CONF_INTERVAL, DEFAULT_INTERVAL))
        for state in self.engine.states():
            sid = state.station_id
            self.stations[sid] = StationRuntime(
                station_id=sid,
                subentry_id=f"{self.entry.entry_id}_{sid}",
                name=state.name,
                camera_entity_id=cameras.get(sid, ""),
                interval=interval,
                defects=tuple(sorted(state.thresholds)),
                line=state.line,
                model_name=state.model,
                remote=True,
            )

    def _stations_changed(self, why: str) -> None:
        """The engine's stations are not the ones we show: reload (once) to follow them."""
        if self._reloading:
            return
        self._reloading = True
        _LOGGER.info("%s: reloading Edge Inspector", why)
        self.hass.config_entries.async_schedule_reload(self.entry.entry_id)

    def _remove_stale_devices(self) -> None:
        """Devices of stations the engine no longer has (its file changed) go away."""
        registry = dr.async_get(self.hass)
        wanted = {runtime.subentry_id for runtime in self.stations.values()}
        for device in dr.async_entries_for_config_entry(registry, self.entry.entry_id):
            idents = {ident for domain, ident in device.identifiers if domain == DOMAIN}
            if idents and not idents & wanted:
                _LOGGER.info("station %s is gone from the engine: removing it", device.name)
                registry.async_remove_device(device.id)

    async def on_connection(self, connected: bool) -> None:
        """The engine service went away or came back (EventSink)."""
        for runtime in self.stations.values():
            self._signal_state(runtime)
        if connected:
            engine_ids = {s.station_id for s in self.engine.states()}
            if engine_ids != set(self.stations):
                self._stations_changed("the engine's stations changed")
                return
            await self.async_update_charts()

    async def async_start(self) -> None:
        await self.engine.start()
        if self.remote:
            self._remote_stations()
            self._remove_stale_devices()
        states = {state.station_id: state for state in self.engine.states()}
        for sid, runtime in self.stations.items():
            issue = f"model_missing_{runtime.subentry_id}"
            runtime.state = states.get(sid)
            if not self.engine.is_running(sid):
                ir.async_create_issue(
                    self.hass,
                    DOMAIN,
                    issue,
                    is_fixable=False,
                    severity=ir.IssueSeverity.ERROR,
                    translation_key="station_failed",
                    translation_placeholders={
                        "station": runtime.name,
                        "error": (runtime.state and runtime.state.error) or "unknown error",
                    },
                )
                continue
            ir.async_delete_issue(self.hass, DOMAIN, issue)
            # fed from its camera entity on an interval: a continuous station inspecting the
            # pictures sent to it (every station in process; a service's `push` ones)
            state = runtime.state
            if (
                state is not None
                and state.push
                and state.mode == "continuous"
                and runtime.camera_entity_id
            ):
                self._unsubs.append(
                    async_track_time_interval(
                        self.hass,
                        self._make_tick(sid),
                        timedelta(seconds=runtime.interval),
                        name=f"edge_inspector {runtime.name}",
                        cancel_on_shutdown=True,
                    )
                )
        for sid, runtime in self.stations.items():
            counts = await self.engine.counts_by_class(station_id=sid)
            runtime.class_counts = {c: 0 for c in runtime.defects} | {
                c.defect_class: c.count for c in counts
            }
        await self.async_update_charts()
        await self._start_checks()

        async def _on_action(event: Event) -> None:
            action = str(event.data.get("action", ""))
            if action.startswith(f"{ACTION_PREFIX}_"):
                user = event.context.user_id or "notification"
                await self.async_notification_action(action, user)

        self._unsubs.append(
            self.hass.bus.async_listen("mobile_app_notification_action", _on_action)
        )

    async def async_update_charts(self, _now: Any = None) -> None:
        """Recompute each station's p-chart from the store."""
        now = dt_util.utcnow()
        engine = self.engine
        for sid, runtime in self.stations.items():
            try:
                base = await engine.inspection_counts(
                    station_id=sid, since=now - BASELINE, until=now - SUBGROUP
                )
                current = await engine.inspection_counts(station_id=sid, since=now - SUBGROUP)
                runtime.feedback = await engine.feedback_counts(station_id=sid)
            except EdgeInspectorError as exc:  # the engine is stopping (unload, reload)
                _LOGGER.debug("control charts not updated: %s", exc)
                return
            runtime.chart = p_chart(
                base.inspections, base.failed, current.inspections, current.failed
            )
            self._signal_state(runtime)

    async def _start_checks(self) -> None:
        self._unsubs.append(
            async_track_time_interval(
                self.hass,
                self.async_update_charts,
                timedelta(seconds=60),
                name="edge_inspector p-charts",
                cancel_on_shutdown=True,
            )
        )
        if await self.engine.vlm_status() is not None:
            self._unsubs.append(
                async_track_time_interval(
                    self.hass,
                    self._check_vlm,
                    timedelta(seconds=30),
                    name="edge_inspector vlm check",
                    cancel_on_shutdown=True,
                )
            )

    async def async_stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()
        await self.engine.stop()

    async def _check_vlm(self, _now: Any = None) -> None:
        """A repair issue while Ollama lacks the configured model; gone once it has it."""
        try:
            status = await self.engine.vlm_status()
        except EngineConnectionError:
            return  # the engine service is away: its connection says so
        if status is not None and status.model_missing:
            ir.async_create_issue(
                self.hass,
                DOMAIN,
                "ollama_model_missing",
                is_fixable=False,
                severity=ir.IssueSeverity.WARNING,
                translation_key="ollama_model_missing",
                translation_placeholders={"error": status.error or ""},
            )
        else:
            ir.async_delete_issue(self.hass, DOMAIN, "ollama_model_missing")

    def _make_tick(self, sid: str) -> Callable[[Any], None]:
        @callback
        def tick(_now: Any) -> None:
            runtime = self.stations[sid]
            if runtime.grabbing:
                return  # the last frame is still being inspected: skip, never pile up
            runtime.grabbing = True
            self.entry.async_create_background_task(
                self.hass, self._grab(sid), f"edge_inspector grab {sid}"
            )

        return tick

    async def _grab(self, sid: str) -> None:
        try:
            await self.async_inspect(sid)
        except HomeAssistantError:
            pass  # logged once by async_inspect's availability handling
        finally:
            self.stations[sid].grabbing = False

    async def incident_image(self, incident_id: str, path: str | None) -> bytes | None:
        """An incident's annotated frame (`path` as the incident says, relative to the
        store's images): read from the store, or from the engine service; None when gone."""
        if path is None:
            return None
        try:
            return await self.engine.incident_image(incident_id)
        except (NotFoundError, EngineConnectionError):
            return None  # removed by retention, or the engine service is away

    # -- inspection ---------------------------------------------------------------------

    async def async_inspect(
        self, sid: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        """Take a picture from the station's camera and inspect it now."""
        runtime = self.stations[sid]
        if self.remote and not runtime.camera_entity_id:
            # the engine reads its own camera
            try:
                return await self.engine.inspect_now(sid, part_id=part_id, lot_id=lot_id)
            except EdgeInspectorError as exc:
                raise _station_error(runtime.name, exc) from exc
        try:
            image = await camera.async_get_image(self.hass, runtime.camera_entity_id, timeout=10)
        except HomeAssistantError as exc:
            self._camera_failed(runtime, str(exc) or type(exc).__name__)
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="camera_no_image",
                translation_placeholders={
                    "station": runtime.name,
                    "camera": runtime.camera_entity_id,
                    "error": str(exc),
                },
            ) from exc
        try:
            result = await self.engine.inspect_image(
                sid, image.content, part_id=part_id, lot_id=lot_id
            )
        except ImageDecodeError as exc:  # the camera sent something that is not a picture
            self._camera_failed(runtime, str(exc))
            raise _station_error(runtime.name, exc) from exc
        except ModelError as exc:  # the engine could not run the model
            if runtime.engine_error is None:
                _LOGGER.error("%s unavailable: the engine failed: %s", runtime.name, exc)
            runtime.engine_error = str(exc)
            self._signal_state(runtime)
            raise _station_error(runtime.name, exc) from exc
        except EdgeInspectorError as exc:
            raise _station_error(runtime.name, exc) from exc
        self._camera_ok(runtime)
        if runtime.engine_error is not None:
            _LOGGER.info("%s available again: the engine runs", runtime.name)
            runtime.engine_error = None
            self._signal_state(runtime)
        return result

    def _camera_failed(self, runtime: StationRuntime, error: str) -> None:
        if runtime.camera_error is None:
            _LOGGER.warning(
                "%s unavailable: camera %s: %s", runtime.name, runtime.camera_entity_id, error
            )
        runtime.camera_error = error
        self._signal_state(runtime)

    def _camera_ok(self, runtime: StationRuntime) -> None:
        if runtime.camera_error is not None:
            _LOGGER.info("%s available again: camera %s", runtime.name, runtime.camera_entity_id)
            runtime.camera_error = None
            self._signal_state(runtime)

    async def _station_command(
        self, sid: str, command: Callable[[], Awaitable[StationState]]
    ) -> None:
        """A command to a station; its entities then show the state the engine answers."""
        try:
            state = await command()
        except EdgeInspectorError as exc:
            raise _station_error(self.stations[sid].name, exc) from exc
        self.stations[sid].state = state
        self._signal_state(self.stations[sid])

    async def async_set_enabled(self, sid: str, enabled: bool) -> None:
        """Pause or resume a station."""
        await self._station_command(sid, lambda: self.engine.set_enabled(sid, enabled))

    async def async_set_threshold(self, sid: str, confidence: float) -> None:
        """Every defect class's confidence threshold of a station."""
        await self._station_command(sid, lambda: self.engine.set_threshold(sid, None, confidence))

    @property
    def is_connected(self) -> bool:
        """False while an engine service does not answer (always True in-process)."""
        return self.engine.connected

    def is_available(self, sid: str) -> bool:
        runtime = self.stations[sid]
        if not self.is_connected:
            return False
        return (
            runtime.camera_error is None
            and runtime.engine_error is None
            and runtime.state is not None
            and runtime.state.error is None
            and self.engine.is_running(sid)
        )

    def _signal_state(self, runtime: StationRuntime) -> None:
        async_dispatcher_send(self.hass, SIGNAL_STATE.format(runtime.station_id))

    # -- actionable notifications --------------------------------------------------------

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

    async def async_set_verdict(
        self, incident_id: str, state: IncidentState, *, by: str, note: str | None
    ) -> Incident | None:
        """An operator's verdict on an incident, kept in its audit trail (`extra.feedback`);
        None when this hub has no such incident."""
        try:
            updated = await self.engine.set_verdict(incident_id, state, by=by, note=note)
        except IncidentNotFoundError:
            return None
        await self.async_update_charts()
        return updated

    async def async_notification_action(self, action: str, user: str) -> None:
        """A button of one of our notifications was pressed."""
        kind, _, ref = action.removeprefix(f"{ACTION_PREFIX}_").partition("|")

        if kind in ("CONFIRM", "REJECT"):
            state = IncidentState.CONFIRMED if kind == "CONFIRM" else IncidentState.REJECTED
            try:
                await self.async_set_verdict(ref, state, by=user, note="notification")
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

    # -- EventSink: the engine's output --------------------------------------------------

    async def on_inspection(self, result: InspectionResult) -> None:
        runtime = self.stations.get(result.station_id)
        if runtime is None:
            return
        runtime.last_result = result
        self._signal_state(runtime)

    async def on_station_state(self, state: StationState) -> None:
        runtime = self.stations.get(state.station_id)
        if runtime is None:
            if self.remote:
                self._stations_changed(f"the engine has a new station {state.station_id}")
            return
        runtime.state = state
        self._signal_state(runtime)

    def _payload(self, incident: Incident, runtime: StationRuntime) -> dict[str, Any]:
        vlm = incident.vlm
        device = station_device(self.hass, self.entry.entry_id, runtime.subentry_id)
        return {
            "device_id": device.id if device else None,
            "entry_id": self.entry.entry_id,
            "station_id": incident.station_id,
            "station": runtime.name,
            "camera_entity_id": runtime.camera_entity_id,
            "incident_id": incident.incident_id,
            "defect_class": incident.defect_class,
            "confidence": round(incident.confidence, 4),
            "part_id": incident.part_id,
            "lot_id": incident.lot_id,
            "state": str(incident.state),
            "frame_path": incident.frame_path,
            "created_at": incident.created_at.isoformat(),
            "vlm_status": str(vlm.status) if vlm else None,
            "vlm_classification": vlm.classification.model_dump(mode="json")
            if vlm and vlm.classification
            else None,
            "vlm_summary": vlm.report.summary if vlm and vlm.report else None,
        }

    async def on_incident(self, incident: Incident) -> None:
        runtime = self.stations.get(incident.station_id)
        if runtime is None:
            return
        runtime.last_incident = incident
        await self._notify(
            f"{runtime.name}: {incident.defect_class} ({incident.confidence:.0%})",
            f"Defect on {runtime.name}"
            + (f", part {incident.part_id}" if incident.part_id else "")
            + ". Is it real?",
            [
                ("CONFIRM", incident.incident_id, "Real defect"),
                ("REJECT", incident.incident_id, "False alarm"),
            ],
            tag=incident.incident_id,
        )
        runtime.class_counts[incident.defect_class] = (
            runtime.class_counts.get(incident.defect_class, 0) + 1
        )
        self.hass.bus.async_fire(EVENT_DEFECT, self._payload(incident, runtime))
        async_dispatcher_send(self.hass, SIGNAL_INCIDENT.format(runtime.station_id), incident)
        self._signal_state(runtime)

    async def on_incident_update(self, incident: Incident) -> None:
        runtime = self.stations.get(incident.station_id)
        if runtime is None:
            return
        if runtime.last_incident and runtime.last_incident.incident_id == incident.incident_id:
            runtime.last_incident = incident
        self.hass.bus.async_fire(EVENT_INCIDENT, self._payload(incident, runtime))
        async_dispatcher_send(self.hass, SIGNAL_INCIDENT.format(runtime.station_id), incident)

    async def on_missed_defect(self, incident: Incident) -> None:
        runtime = self.stations.get(incident.station_id)
        if runtime is None:
            return
        # its own bus event: not a detection, so not the defect event entity's, nor a
        # notification asking whether it is real (a person has said so)
        self.hass.bus.async_fire(EVENT_MISSED_DEFECT, self._payload(incident, runtime))
        self._signal_state(runtime)

    async def on_alert(self, alert: OperatorAlert) -> None:
        runtime = self.stations.get(alert.station_id)
        title = f"Edge Inspector: {runtime.name if runtime else alert.station_id}"
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
        self.hass.bus.async_fire(f"{DOMAIN}_alert", alert.model_dump(mode="json"))
