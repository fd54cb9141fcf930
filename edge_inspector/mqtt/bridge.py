"""The engine on an MQTT bus: events out (through the outbox), commands in, HA discovery.

paho-mqtt runs its network loop in its own thread and a drain thread feeds it from the outbox,
so publishing never blocks detection. Every QoS 1 event (defects, incident updates) goes through
the durable outbox; retained state, the last defect image and optional per-inspection messages
are sent directly, since only their latest value matters and it is sent again on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..commands import (
    ConfirmCommand,
    InputError,
    InspectCommand,
    RefusalLog,
    SetCommand,
    parse_command,
    parse_object,
)
from ..config import ActionConfig, MqttActionTarget, MqttConfig, StationConfig
from ..errors import EdgeInspectorError
from ..events import (
    ActionRecord,
    Incident,
    InspectionResult,
    OperatorAlert,
    QualityReport,
    StationState,
)
from ..sinks import EventSink
from ..store import Store
from ..tools.actions import ActionContext, ActionError
from .discovery import discovery_payload, discovery_topic, encode
from .outbox import Outbox, OutboxMessage, Queued
from .topics import BrokerUrl, Topics, parse_broker_url

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = [
    "ConfirmCommand",
    "InspectCommand",
    "MqttActionPort",
    "MqttBridge",
    "SetCommand",
    "StationControl",
    "attach_mqtt",
]

_LOGGER = logging.getLogger(__name__)
_WINDOW = 64  # QoS 1 messages in flight at once
_COALESCE_S = 0.002
_COMMAND_BYTES = 4096  # a command is a few fields
_WAITING_INSPECTS = 8  # inspect commands queued for one station; more are refused as busy
_COMMANDS = ("set", "inspect", "confirm")


class StationControl(Protocol):
    """What MQTT commands may do to the engine."""

    async def set_enabled(self, station_id: str, enabled: bool) -> StationState: ...

    async def set_threshold(
        self, station_id: str, class_name: str | None, confidence: float
    ) -> StationState: ...

    async def inspect_now(
        self, station_id: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult: ...

    async def resolve_action(
        self, incident_id: str, request_id: str, *, approve: bool, by: str
    ) -> ActionRecord: ...


def state_payload(state: StationState) -> bytes:
    """The station state with what Home Assistant's threshold entity reads: one threshold.
    (The defect rate and the other quality figures are on `<base>/<station>/kpi`.)"""
    data = state.model_dump(mode="json")
    data["threshold"] = min(state.thresholds.values()) if state.thresholds else None
    return json.dumps(data, separators=(",", ":")).encode()


class MqttBridge(EventSink):
    """Publishes the engine's events to a broker and runs the commands it receives."""

    def __init__(
        self,
        config: MqttConfig,
        stations: Sequence[StationConfig],
        *,
        outbox_path: Path,
        control: StationControl | None = None,
        url: str | None = None,
        store: Store | None = None,
    ) -> None:
        broker_url = url or config.url
        if not broker_url:
            raise EdgeInspectorError("MQTT needs a broker URL (mqtt.url or --mqtt)")
        self.broker: BrokerUrl = parse_broker_url(broker_url)
        self.config = config
        self.topics = Topics(config.base_topic)
        self._stations = {s.id: s for s in stations}
        self._control = control
        self._store = store
        self.outbox = Outbox(
            outbox_path,
            max_messages=config.outbox_max_messages,
            max_age_s=config.outbox_max_age_hours * 3600,
        )
        self._states: dict[str, bytes] = {}
        self._retained: dict[str, bytes] = {}  # the latest KPIs, by topic
        self._last_inspection: dict[str, float] = {}
        self._lock = threading.Lock()
        # Outbox messages handed to paho and not yet acknowledged. Tracked by paho's message
        # info rather than by message id: ids are reused, and this bridge's other QoS 1
        # publishes (state, discovery) are acknowledged through the same callback.
        self._inflight: list[tuple[mqtt.MQTTMessageInfo, int]] = []
        self._pending: list[Queued] = []  # not yet in the outbox
        self._last_sent = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.connected = threading.Event()
        self.ready = threading.Event()  # connected and listening for commands
        self._subscription: int | None = None
        self._waiting: dict[str, int] = {}  # inspect commands per station, running or queued
        self._refusals = RefusalLog(_LOGGER)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drainer: threading.Thread | None = None
        self._client = self._make_client()

    # -- connection --------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        protocol = mqtt.MQTTv5 if self.config.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edge_inspector_{self.config.node_id}",
            protocol=protocol,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            ca = str(self.config.ca_file) if self.config.ca_file else None
            client.tls_set(
                ca_certs=ca,
                cert_reqs=ssl.CERT_NONE if self.config.tls_insecure else ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(self.config.tls_insecure)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(_WINDOW)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    async def start(self) -> None:
        """Connect in the background (the engine runs whether or not the broker is there)."""
        self._loop = asyncio.get_running_loop()
        await self._catch_up()
        self._client.connect_async(
            self.broker.host, self.broker.port, keepalive=self.config.keepalive
        )
        self._client.loop_start()
        self._drainer = threading.Thread(
            target=self._drain, name="edge_inspector_mqtt_outbox", daemon=True
        )
        self._drainer.start()
        _LOGGER.info(
            "MQTT: connecting to %s (base topic %s)", self.broker.redacted(), self.topics.base
        )

    async def _catch_up(self) -> None:
        """Enqueue incidents the store has but the outbox never got (a crash between the two)."""
        if self._store is None:
            return
        since = datetime.now(UTC) - timedelta(hours=self.config.outbox_max_age_hours)
        recent = await self._store.incidents(since=since, limit=10_000)
        loop = asyncio.get_running_loop()
        sent = await loop.run_in_executor(
            None, self.outbox.enqueued, [i.incident_id for i in recent]
        )
        missing = [i for i in reversed(recent) if i.incident_id not in sent]
        for incident in missing:
            await self._enqueue_defect(incident)
        if missing:
            _LOGGER.info("MQTT: %d incident(s) from before a restart queued", len(missing))

    async def _enqueue_defect(self, incident: Incident) -> None:
        """A new incident on `defect`, a reported missed one on `missed`: each once (the
        outbox keys it by incident, so the catch-up after a restart never sends it again)."""
        topic = self.topics.missed if incident.extra.get("missed") else self.topics.defect
        self._enqueue(
            topic(incident.station_id),
            incident.model_dump_json().encode(),
            incident.incident_id,
        )

    def _enqueue(
        self, topic: str, payload: bytes, key: str | None, *, retain: bool = False
    ) -> None:
        # The drain thread commits these to the outbox in batches. Nothing is lost if the
        # process dies first: the incident is in the store, and the next start queues it again.
        with self._lock:
            self._pending.append((topic, payload, key, retain))
        self._wake.set()

    @property
    def queued(self) -> int:
        """QoS 1 messages not yet acknowledged by the broker."""
        with self._lock:
            pending = len(self._pending)
        return pending + len(self.outbox)

    def _store_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self.outbox.put_many(pending)

    async def stop(self) -> None:
        """Say offline, disconnect, stop the threads. Unsent messages stay in the outbox."""
        self._stopping.set()
        self._wake.set()
        loop = asyncio.get_running_loop()
        if self.connected.is_set():
            info = self._client.publish(self.topics.status, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await loop.run_in_executor(None, info.wait_for_publish, 2.0)
        self._client.disconnect()
        self._client.loop_stop()
        if self._drainer is not None:
            await loop.run_in_executor(None, self._drainer.join, 5.0)
        self.outbox.close()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any = None
    ) -> None:
        if reason.is_failure:
            _LOGGER.warning("MQTT: %s refused the connection: %s", self.broker.redacted(), reason)
            return
        _LOGGER.info("MQTT: connected to %s", self.broker.redacted())
        client.publish(self.topics.status, "online", qos=1, retain=True)
        if self.config.discovery:
            self._announce(client)
        with self._lock:
            states = list(self._states.items())
            retained = list(self._retained.items())
            self._inflight.clear()
            self._last_sent = 0  # resend everything not acknowledged, in order
        for station, payload in states:
            client.publish(self.topics.state(station), payload, qos=1, retain=True)
        for topic, payload in retained:
            client.publish(topic, payload, qos=1, retain=True)
        # every station's command topics, known or not: a command for a station that is not
        # here is answered (on its error topic) rather than lost
        commands = [(f"{self.topics.base}/+/{command}", 1) for command in _COMMANDS]
        self._subscription = client.subscribe(commands)[1]
        self.connected.set()
        self._wake.set()

    def _announce(self, client: mqtt.Client) -> None:
        prefix, node = self.config.discovery_prefix, self.config.node_id
        current = {discovery_topic(prefix, node, s) for s in self._stations}
        for topic in self.outbox.announced() - current:  # stations removed from the config
            client.publish(topic, b"", qos=1, retain=True)
        for station in self._stations.values():
            client.publish(
                discovery_topic(prefix, node, station.id),
                encode(discovery_payload(station, self.topics, node)),
                qos=1,
                retain=True,
            )
        self.outbox.set_announced(current)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any = None
    ) -> None:
        if mid == self._subscription:
            self.ready.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any = None
    ) -> None:
        if self.connected.is_set() and not self._stopping.is_set():
            _LOGGER.warning(
                "MQTT: lost %s (%s); retrying, events wait in the outbox (%d)",
                self.broker.redacted(),
                reason,
                len(self.outbox),
            )
        self.connected.clear()
        self.ready.clear()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any = None
    ) -> None:
        # Runs on paho's network thread while it holds its own lock: only wake the drain thread,
        # which does the bookkeeping and the database work in batches.
        self._wake.set()

    def _flush_acks(self) -> None:
        done: list[int] = []
        waiting: list[tuple[mqtt.MQTTMessageInfo, int]] = []
        with self._lock:
            for info, seq in self._inflight:  # one look at each: a PUBACK may land meanwhile
                if info.is_published():
                    done.append(seq)
                else:
                    waiting.append((info, seq))
            self._inflight = waiting
        self.outbox.ack(done)

    def _drain(self) -> None:
        while not self._stopping.is_set():
            if self._wake.wait(1.0):
                # Let acknowledgements and new events gather: one database round and one
                # batch for many messages instead of a thread switch per PUBACK.
                time.sleep(_COALESCE_S)
            self._wake.clear()
            self._store_pending()
            self._flush_acks()
            while self.connected.is_set() and not self._stopping.is_set():
                self._store_pending()
                self._flush_acks()
                with self._lock:
                    room, after = _WINDOW - len(self._inflight), self._last_sent
                if room <= 0:
                    break
                batch = self.outbox.after(after, room)
                if not batch or not self._publish(batch):
                    break
        self._store_pending()
        self._flush_acks()

    def _publish(self, batch: list[OutboxMessage]) -> bool:
        """Hand messages to paho; False once the connection is gone (the rest waits)."""
        for message in batch:
            info = self._client.publish(
                message.topic, message.payload, qos=message.qos, retain=message.retain
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            with self._lock:
                self._last_sent = message.seq
                self._inflight.append((info, message.seq))
        return True

    # -- commands ----------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = self.topics.command(message.topic)
        if parsed is None or self._loop is None:
            return
        station, command = parsed
        raw = bytes(message.payload)
        if command == "inspect" and station in self._stations:
            # counted here, in arrival order: a burst beyond what the station can work through
            # is refused at once instead of waiting out a timeout
            with self._lock:
                waiting = self._waiting.get(station, 0)
                if waiting < _WAITING_INSPECTS:
                    self._waiting[station] = waiting + 1
            if waiting >= _WAITING_INSPECTS:
                # answered from the event loop, like every other refusal: the refusal log's
                # counters are the loop's alone
                busy = f"busy: {waiting} inspections are waiting already"
                self._loop.call_soon_threadsafe(self._refuse, station, command, busy, raw)
                return
        asyncio.run_coroutine_threadsafe(self._command(station, command, raw), self._loop)

    def _refuse(self, station: str, command: str, error: str, raw: bytes) -> None:
        """Answer a command that was not carried out, on the station's error topic."""
        self._refusals.warning("MQTT: refused %s command for %s: %s", command, station, error)
        body = {
            "command": command,
            "station": station,
            "error": error,
            "payload": raw[:500].decode("utf-8", "replace"),
        }
        self._client.publish(self.topics.error(station), json.dumps(body), qos=1)

    async def _command(self, station: str, command: str, raw: bytes) -> None:
        try:
            await self._run_command(station, command, raw)
        except (EdgeInspectorError, KeyError) as exc:
            self._refuse(station, command, str(exc), raw)
        except TimeoutError:
            self._refuse(station, command, "the station did not answer in time", raw)
        except Exception as exc:  # a command never disappears, whatever went wrong
            _LOGGER.exception("MQTT: %s command for %s failed", command, station)
            self._refuse(station, command, f"internal error: {type(exc).__name__}", raw)
        finally:
            if command == "inspect" and station in self._stations:
                with self._lock:
                    self._waiting[station] -= 1

    async def _run_command(self, station: str, command: str, raw: bytes) -> None:
        if station not in self._stations or self._control is None:
            near = [s for s in self._stations if s.casefold() == station.casefold()]
            hint = f" (station ids are case-sensitive: {near[0]!r})" if near else ""
            raise InputError(f"no station {station!r}{hint}")
        data = parse_object(raw, max_bytes=_COMMAND_BYTES)
        if command == "set":
            await self._set(station, parse_command(SetCommand, data))
        elif command == "confirm":
            confirm = parse_command(ConfirmCommand, data)
            await self._control.resolve_action(
                confirm.incident_id, confirm.request_id, approve=confirm.approve, by=confirm.by
            )
        else:
            inspect = parse_command(InspectCommand, data)
            await self._control.inspect_now(station, part_id=inspect.part_id, lot_id=inspect.lot_id)

    async def _set(self, station: str, command: SetCommand) -> None:
        assert self._control is not None
        unknown = sorted(set(command.thresholds or {}) - set(self._stations[station].defects))
        if unknown:  # refused before anything changes
            raise EdgeInspectorError(f"not a defect class of {station}: {', '.join(unknown)}")
        if command.threshold is not None:
            await self._control.set_threshold(station, None, command.threshold)
        for name, value in (command.thresholds or {}).items():
            await self._control.set_threshold(station, name, value)
        if command.enabled is not None:
            await self._control.set_enabled(station, command.enabled)

    # -- events ------------------------------------------------------------------------------

    async def on_station_state(self, state: StationState) -> None:
        payload = state_payload(state)
        with self._lock:
            self._states[state.station_id] = payload
        if self.connected.is_set():
            self._client.publish(self.topics.state(state.station_id), payload, qos=1, retain=True)

    async def on_incident(self, incident: Incident) -> None:
        loop = asyncio.get_running_loop()
        await self._enqueue_defect(incident)
        path = None if self._store is None else self._store.image_file(incident.frame_path)
        if path is not None and self.connected.is_set():
            try:
                image = await loop.run_in_executor(None, path.read_bytes)
            except OSError as exc:
                _LOGGER.warning("MQTT: cannot read %s: %s", incident.frame_path, exc)
            else:
                self._client.publish(
                    self.topics.image(incident.station_id), image, qos=0, retain=True
                )

    async def on_missed_defect(self, incident: Incident) -> None:
        await self._enqueue_defect(incident)

    async def on_incident_update(self, incident: Incident) -> None:
        self._enqueue(
            self.topics.incident(incident.station_id), incident.model_dump_json().encode(), None
        )

    async def on_alert(self, alert: OperatorAlert) -> None:
        self._enqueue(self.topics.alert(alert.station_id), alert.model_dump_json().encode(), None)

    async def on_quality(self, report: QualityReport) -> None:
        """Each station's KPIs, and the whole report, retained: a new subscriber gets them."""
        retained = {
            self.topics.kpi(row.station_id): row.model_dump_json().encode()
            for row in report.stations
            if row.station_id is not None
        }
        retained[self.topics.quality] = report.model_dump_json().encode()
        with self._lock:
            self._retained.update(retained)
        if self.connected.is_set():
            for topic, payload in retained.items():
                self._client.publish(topic, payload, qos=1, retain=True)

    async def on_shift_report(self, report: QualityReport) -> None:
        """Queued like a defect (a broker away at the end of a shift loses nothing), retained.
        The engine reports each shift once (its quality monitor remembers which it did)."""
        self._enqueue(
            self.topics.shift_report, report.model_dump_json().encode(), None, retain=True
        )

    async def publish_action(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish an action now, or fail: an action is never queued to run hours later."""
        if not self.connected.is_set():
            raise ActionError(f"MQTT broker {self.broker.redacted()} is not connected")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ActionError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        if qos:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(RuntimeError, ValueError):
                await loop.run_in_executor(None, info.wait_for_publish, 5.0)
            if not info.is_published():
                raise ActionError("the MQTT broker did not acknowledge the action in 5 s")

    async def on_inspection(self, result: InspectionResult) -> None:
        if not self.config.publish_inspections or not self.connected.is_set():
            return
        now = time.monotonic()
        if (
            now - self._last_inspection.get(result.station_id, 0.0)
            < 1.0 / self.config.inspections_per_second
        ):
            return
        self._last_inspection[result.station_id] = now
        self._client.publish(
            self.topics.inspection(result.station_id), result.model_dump_json(), qos=0
        )


def attach_mqtt(engine: Engine, url: str | None = None) -> MqttBridge | None:
    """Put an engine on its broker (the configuration's, or `url`); None when there is none."""
    config = engine.config
    if not (url or config.mqtt.url):
        return None
    bridge = MqttBridge(
        config.mqtt,
        config.stations,
        outbox_path=config.store.path / "mqtt-outbox.sqlite3",
        control=engine,
        url=url,
        store=engine.store,
    )
    engine.sinks.add(bridge)
    engine.action_ports["mqtt"] = MqttActionPort(bridge)
    return bridge


class MqttActionPort:
    """`mqtt` action targets: the call as JSON on the action's topic, through this bridge."""

    def __init__(self, bridge: MqttBridge) -> None:
        self._bridge = bridge

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str:
        target = action.target
        assert isinstance(target, MqttActionTarget)
        payload = json.dumps(
            {
                "action": action.name,
                "arguments": arguments,
                **context.as_dict(),
                "at": datetime.now(UTC).isoformat(),
            }
        ).encode()
        await self._bridge.publish_action(target.topic, payload, target.qos, target.retain)
        return f"published to {target.topic}"
