"""A client of the engine service, shaped like the in-process engine.

`RemoteEngine` offers what Home Assistant's integration uses of `Engine` (stations and their
states, the store's queries, commands, verdicts, manual search, an event-sink fan-out) over the
HTTP API and its websocket, so the integration runs the same code in both modes. Events arrive
from the websocket; when it drops, `connected` clears (logged once), the client reconnects with
back-off, and asks for the incidents stored since the last one it saw, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from ..config import ActionConfig
from ..errors import EdgeInspectorError, ImageDecodeError, StationNotFoundError
from ..events import (
    ActionRecord,
    Incident,
    IncidentState,
    InspectionResult,
    ModelInfo,
    OperatorAlert,
    StationState,
)
from ..sinks import EventSink, SinkFanout
from ..store.history import ClassCount, FeedbackCounts, InspectionCounts, RateBucket

__all__ = ["EngineClient", "EngineUnreachableError", "RemoteEngine"]

_LOGGER = logging.getLogger(__name__)


class EngineUnreachableError(EdgeInspectorError):
    """The engine service does not answer (or refuses the token)."""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


class EngineClient:
    """The HTTP API, one method per call; errors become EdgeInspectorError subclasses."""

    def __init__(
        self, url: str, token: str | None, session: aiohttp.ClientSession, *, timeout: float = 30
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token or None
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        raw: bool = False,
    ) -> Any:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self.session.request(
                method,
                f"{self.url}{path}",
                params=query,
                json=json_body,
                data=data,
                headers=headers,
                timeout=self.timeout,
            ) as response:
                body = await response.read()
                if response.status >= 400:
                    self._raise(response.status, body)
                if raw:
                    return body
                return json.loads(body) if body else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EngineUnreachableError(
                f"engine at {self.url}: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from exc

    def _raise(self, status: int, body: bytes) -> None:
        try:
            error = json.loads(body)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http", body[:200].decode(errors="replace")
        if status == 401:
            raise EngineUnreachableError(f"engine at {self.url} refused the token: {message}")
        if code == "station_not_found":
            raise StationNotFoundError(message)
        if code == "bad_image":
            raise ImageDecodeError(message)
        raise EdgeInspectorError(f"engine: {message} ({status} {code})")

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/api/health")
        return result

    async def stations(self) -> list[StationState]:
        data = await self.request("GET", "/api/stations")
        return [StationState.model_validate(s) for s in data["stations"]]


@dataclass(slots=True)
class RemoteVlm:
    """What the integration reads of the enricher: its last error (None while it answers)."""

    last_error: str | None = None


class RemoteStation:
    """One station of the remote engine: its last known state and what can be asked of it."""

    def __init__(self, engine: RemoteEngine, state: StationState) -> None:
        self._engine = engine
        self._state = state

    @property
    def id(self) -> str:
        return self._state.station_id

    def state(self) -> StationState:
        return self._state

    def update(self, state: StationState) -> None:
        self._state = state

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(name=self._state.model or "remote", sha256="0" * 64)

    async def inspect_image(
        self, image: bytes, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        data = await self._engine.client.request(
            "POST",
            f"/api/stations/{quote(self.id, safe='')}/frames",
            params={"part_id": part_id, "lot_id": lot_id},
            data=image,
            content_type="image/jpeg",
        )
        return InspectionResult.model_validate(data)

    async def inspect_now(
        self, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        data = await self._engine.client.request(
            "POST",
            f"/api/stations/{quote(self.id, safe='')}/inspect",
            json_body={k: v for k, v in (("part_id", part_id), ("lot_id", lot_id)) if v},
        )
        return InspectionResult.model_validate(data)


class RemoteStore:
    """The store's queries, answered by the engine service."""

    def __init__(self, client: EngineClient) -> None:
        self._client = client

    async def _stats(
        self, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._client.request(
            "GET",
            "/api/stats",
            params={"station_id": station_id, "since": _iso(since), "until": _iso(until)},
        )
        return result

    async def counts_by_class(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[ClassCount]:
        stats = await self._stats(station_id, since, until)
        return [
            ClassCount(c, int(n))
            for c, n in sorted(stats["by_class"].items(), key=lambda x: (-x[1], x[0]))
        ]

    async def inspection_counts(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> InspectionCounts:
        stats = await self._stats(station_id, since, until)
        return InspectionCounts(int(stats["inspections"]), int(stats["failed"]))

    async def feedback_counts(
        self, *, station_id: str | None = None, since: datetime | None = None
    ) -> FeedbackCounts:
        feedback = (await self._stats(station_id, since, None))["feedback"]
        return FeedbackCounts(
            confirmed=int(feedback["confirmed"]),
            rejected=int(feedback["rejected"]),
            missed=int(feedback["missed"]),
        )

    async def rate_series(
        self, *, station_id: str | None, since: datetime, until: datetime, bucket: float
    ) -> list[RateBucket]:
        data = await self._client.request(
            "GET",
            "/api/stats/series",
            params={
                "station_id": station_id,
                "since": _iso(since),
                "until": _iso(until),
                "bucket_s": max(10, int(bucket)),
            },
        )
        return [
            RateBucket(
                start=datetime.fromisoformat(p["start"]),
                inspections=int(p["inspections"]),
                failed=int(p["failed"]),
                incidents=int(p["incidents"]),
            )
            for p in data["points"]
        ]

    async def incidents(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Incident]:
        data = await self._client.request(
            "GET",
            "/api/incidents",
            params={
                "station_id": station_id,
                "since": _iso(since),
                "until": _iso(until),
                "limit": max(1, min(limit, 500)),
                "offset": offset,
            },
        )
        return [Incident.model_validate(i) for i in data["incidents"]]

    async def incident(self, incident_id: str) -> Incident | None:
        try:
            data = await self._client.request(
                "GET", f"/api/incidents/{quote(incident_id, safe='')}"
            )
        except EngineUnreachableError:
            raise
        except EdgeInspectorError:
            return None
        return Incident.model_validate(data)

    async def last_incident(self, station_id: str | None = None) -> Incident | None:
        found = await self.incidents(station_id=station_id, limit=1)
        return found[0] if found else None

    async def inspection(self, inspection_id: str) -> InspectionResult | None:
        try:
            data = await self._client.request(
                "GET", f"/api/inspections/{quote(inspection_id, safe='')}"
            )
        except EngineUnreachableError:
            raise
        except EdgeInspectorError:
            return None
        return InspectionResult.model_validate(data)


class RemoteEngine:
    """The engine service, used like the in-process `Engine`."""

    remote = True

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        session: aiohttp.ClientSession,
        sinks: Iterable[EventSink] = (),
        reconnect_max: float = 30.0,
    ) -> None:
        self.client = EngineClient(url, token, session)
        self.store = RemoteStore(self.client)
        self.sinks = SinkFanout(sinks)
        self.stations: dict[str, RemoteStation] = {}
        self.failed: dict[str, StationState] = {}
        self.enricher: RemoteVlm | None = None
        self.manuals: bool | None = None
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.on_connection: Callable[[bool], Awaitable[None] | None] | None = None
        # Carries out the engine's `service` actions (Home Assistant): action, arguments,
        # context -> what was done; raises to refuse.
        self.action_handler: (
            Callable[[ActionConfig, dict[str, Any], dict[str, Any]], Awaitable[str]] | None
        ) = None
        self._action_tasks: set[asyncio.Task[None]] = set()
        self._reconnect_max = reconnect_max
        self._task: asyncio.Task[None] | None = None
        self._seen: deque[str] = deque(maxlen=2000)
        self._since = datetime.now(UTC)

    @property
    def url(self) -> str:
        return self.client.url

    async def start(self) -> None:
        """Read the stations (raises EngineUnreachableError when the engine does not answer),
        then follow its events."""
        await self._refresh()
        self._task = asyncio.create_task(self._follow(), name="edge_inspector remote events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected.clear()

    async def _refresh(self) -> None:
        states = await self.client.stations()
        health = await self.client.health()
        vlm = health.get("vlm")
        self.enricher = None if vlm is None else RemoteVlm(None if vlm == "ok" else "VLM degraded")
        for state in states:
            self._apply_state(state)
        current = {s.station_id for s in states}
        for gone in [sid for sid in self.stations if sid not in current]:
            del self.stations[gone]  # removed from the engine's configuration
        for gone in [sid for sid in self.failed if sid not in current]:
            del self.failed[gone]

    def _apply_state(self, state: StationState) -> None:
        if (
            state.error
            and not state.available
            and state.frames == 0
            and (state.station_id not in self.stations)
        ):
            self.failed[state.station_id] = state
            return
        self.failed.pop(state.station_id, None)
        station = self.stations.get(state.station_id)
        if station is None:
            self.stations[state.station_id] = RemoteStation(self, state)
        else:
            station.update(state)

    def station(self, station_id: str) -> RemoteStation:
        try:
            return self.stations[station_id]
        except KeyError:
            if station_id in self.failed:
                raise EdgeInspectorError(
                    f"station {station_id} is not running: {self.failed[station_id].error}"
                ) from None
            raise StationNotFoundError(f"no station {station_id!r}") from None

    def states(self) -> list[StationState]:
        return [s.state() for s in self.stations.values()] + list(self.failed.values())

    # -- commands ----------------------------------------------------------------------------

    async def set_enabled(self, station_id: str, enabled: bool) -> None:
        data = await self.client.request(
            "POST",
            f"/api/stations/{quote(station_id, safe='')}/enabled",
            json_body={"enabled": enabled},
        )
        self._apply_state(StationState.model_validate(data))

    async def set_threshold(
        self, station_id: str, class_name: str | None, confidence: float
    ) -> None:
        data = await self.client.request(
            "POST",
            f"/api/stations/{quote(station_id, safe='')}/thresholds",
            json_body={"class": class_name, "confidence": confidence},
        )
        self._apply_state(StationState.model_validate(data))

    async def inspect_now(
        self, station_id: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        return await self.station(station_id).inspect_now(part_id=part_id, lot_id=lot_id)

    async def set_verdict(
        self, incident_id: str, state: IncidentState, *, by: str, note: str | None = None
    ) -> Incident | None:
        try:
            data = await self.client.request(
                "POST",
                f"/api/incidents/{quote(incident_id, safe='')}/verdict",
                json_body={"state": str(state), "by": by, "note": note},
            )
        except EngineUnreachableError:
            raise
        except EdgeInspectorError as exc:
            if "(404 " in str(exc):
                return None
            raise
        return Incident.model_validate(data)  # the update arrives from the websocket too

    async def resolve_action(
        self, incident_id: str, request_id: str, *, approve: bool, by: str
    ) -> ActionRecord:
        data = await self.client.request(
            "POST",
            f"/api/incidents/{quote(incident_id, safe='')}/actions/{quote(request_id, safe='')}",
            json_body={"approve": approve, "by": by},
        )
        return ActionRecord.model_validate(data)

    async def report_missed_defect(
        self,
        station_id: str,
        defect_class: str,
        *,
        by: str,
        part_id: str | None = None,
        lot_id: str | None = None,
        note: str | None = None,
    ) -> Incident:
        data = await self.client.request(
            "POST",
            "/api/incidents",
            json_body={
                "station_id": station_id,
                "defect_class": defect_class,
                "by": by,
                "part_id": part_id,
                "lot_id": lot_id,
                "note": note,
            },
        )
        return Incident.model_validate(data)

    async def search_manuals(self, query: str, *, limit: int = 3) -> list[Any]:
        from ..manuals.index import ManualHit

        data = await self.client.request(
            "GET", "/api/manuals/search", params={"q": query, "limit": limit}
        )
        self.manuals = bool(data["indexed"])
        return [
            ManualHit(
                file=h["file"],
                section=h["section"],
                page=h.get("page"),
                excerpt=h["excerpt"],
                score=float(h.get("score", 0.0)),
            )
            for h in data["results"]
        ]

    async def incident_image(self, incident_id: str, kind: str = "frame") -> bytes | None:
        try:
            body: bytes = await self.client.request(
                "GET", f"/api/incidents/{quote(incident_id, safe='')}/images/{kind}", raw=True
            )
        except EngineUnreachableError:
            raise
        except EdgeInspectorError:
            return None
        return body

    # -- events ------------------------------------------------------------------------------

    async def _set_connected(self, up: bool, error: str | None = None) -> None:
        if up == self.connected.is_set():
            return
        if up:
            self.connected.set()
            self.last_error = None
            _LOGGER.info("engine at %s reachable again", self.url)
        else:
            self.connected.clear()
            self.last_error = error
            _LOGGER.warning("engine at %s unreachable: %s", self.url, error)
        if self.on_connection is not None:
            result = self.on_connection(up)
            if result is not None:
                await result

    async def _follow(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._session()
                delay = 1.0
                error = "the engine closed the connection"
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError, EdgeInspectorError) as exc:
                error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            except Exception as exc:  # a bug must not end the follower
                _LOGGER.exception("engine events from %s", self.url)
                error = f"{type(exc).__name__}: {exc}"
            await self._set_connected(False, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max)

    async def _session(self) -> None:
        url = f"{self.client.url}/api/ws"
        params = {"since": _iso(self._since) or ""}
        if self.action_handler is not None and self.client.token:
            # the engine lets only a client with its token carry out its actions
            params["actions"] = "1"
        # The engine pings every 30 s (the server's heartbeat) and the client answers by
        # itself, so a link that stays silent for 75 s is dead. (The client's own heartbeat is
        # not used: aiohttp 3.14 re-arms its timer when a message arrives as the socket closes,
        # and the timer outlives the connection.)
        async with self.client.session.ws_connect(
            url,
            params=params,
            headers=self.client.headers,
            timeout=aiohttp.ClientWSTimeout(ws_receive=75, ws_close=10),
        ) as ws:
            await self._refresh()
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                        break
                    continue
                data = json.loads(message.data)
                if data.get("type") == "action_call":
                    task = asyncio.create_task(self._act(ws, data["data"]))
                    self._action_tasks.add(task)
                    task.add_done_callback(self._action_tasks.discard)
                    continue
                await self._handle(data)

    async def _act(self, ws: aiohttp.ClientWebSocketResponse, call: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"type": "action_result", "call_id": call.get("call_id")}
        try:
            if self.action_handler is None:
                raise EdgeInspectorError("this client does not carry out actions")
            action = ActionConfig.model_validate(call["action"])
            result = await self.action_handler(
                action, dict(call.get("arguments") or {}), dict(call.get("context") or {})
            )
            reply |= {"ok": True, "result": result}
        except Exception as exc:  # every failure goes back to the engine, as the action's error
            reply |= {"ok": False, "error": str(exc) or type(exc).__name__}
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(reply)

    def _first_time(self, incident: Incident) -> bool:
        """Not seen before (a replay after a reconnection repeats the newest incidents)."""
        self._since = max(self._since, incident.created_at)
        if incident.incident_id in self._seen:
            return False
        self._seen.append(incident.incident_id)
        return True

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data")
        if kind == "ready":
            await self._set_connected(True)
        elif kind == "station_state":
            state = StationState.model_validate(data)
            self._apply_state(state)
            await self.sinks.on_station_state(state)
        elif kind == "inspection":
            await self.sinks.on_inspection(InspectionResult.model_validate(data))
        elif kind == "incident":
            incident = Incident.model_validate(data)
            if self._first_time(incident):
                await self.sinks.on_incident(incident)
        elif kind == "incident_update":
            await self.sinks.on_incident_update(Incident.model_validate(data))
        elif kind == "missed_defect":
            incident = Incident.model_validate(data)
            if self._first_time(incident):
                await self.sinks.on_missed_defect(incident)
        elif kind == "alert":
            await self.sinks.on_alert(OperatorAlert.model_validate(data))
