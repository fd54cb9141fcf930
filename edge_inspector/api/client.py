"""A client of the engine service: the inspection engine contract (`InspectionEngine`) over
the HTTP API and its websocket.

`RemoteEngine` is what Home Assistant's integration uses when the engine runs as a service:
the same contract as the in-process `Engine`, so the integration runs the same code in both
modes. Errors come back typed, from the API's error codes. Events arrive from the websocket;
when it drops, `connected` goes False (logged once, told to the sinks), the client reconnects
with back-off, and asks for the incidents stored since the last one it saw, so nothing is
missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel

from ..config import ActionConfig
from ..contract import ImageKind, VlmStatus
from ..errors import (
    EdgeInspectorError,
    EngineAuthError,
    EngineUnreachableError,
    ImageDecodeError,
    ImageNotFoundError,
    IncidentNotFoundError,
    InputError,
    ManualsNotIndexedError,
    ModelError,
    NotFoundError,
    RefusedError,
    SourceError,
    StationNotFoundError,
)
from ..events import (
    ActionRecord,
    Incident,
    IncidentState,
    InspectionResult,
    OperatorAlert,
    QualityReport,
    StationState,
)
from ..sinks import EventSink, SinkFanout
from ..store.history import ClassCount, RateBucket
from ..tasks import cancel
from ..tools.actions import ActionContext

if TYPE_CHECKING:
    from ..manuals import ManualHit
    from ..tools.actions import ActionPort

__all__ = ["EngineClient", "EngineUnreachableError", "RemoteEngine"]

_LOGGER = logging.getLogger(__name__)

# the API's error codes, as the exceptions the engine in this process raises
_CODES: dict[str, type[EdgeInspectorError]] = {
    "station_not_found": StationNotFoundError,
    "incident_not_found": IncidentNotFoundError,
    "inspection_not_found": NotFoundError,
    "image_not_found": ImageNotFoundError,
    "unknown_image": ImageNotFoundError,
    "no_frame": ImageNotFoundError,
    "not_found": NotFoundError,
    "bad_image": ImageDecodeError,
    "source": SourceError,
    "model_error": ModelError,
    "refused": RefusedError,
}


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
        if status == 401 or (status == 403 and code in ("token_required", "bad_host")):
            raise EngineAuthError(f"engine at {self.url} refused the token: {message}")
        if code in _CODES:
            raise _CODES[code](message)
        if status in (400, 413, 415):
            raise InputError(message, code=code, status=status)
        if status == 504:
            raise TimeoutError(f"engine: {message}")
        raise EdgeInspectorError(f"engine: {message} ({status} {code})")

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/api/health")
        return result

    async def stations(self) -> list[StationState]:
        data = await self.request("GET", "/api/stations")
        return [StationState.model_validate(s) for s in data["stations"]]


class RemoteEngine:
    """The engine service, behind the same contract as the in-process `Engine`."""

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
        self.sinks = SinkFanout(sinks)
        self._states: dict[str, StationState] = {}
        self._quality: QualityReport | None = None
        self._token_refused = False  # the last attempt to follow the events was refused it
        self._connected = asyncio.Event()
        self.connection_error: str | None = None
        self.connection_attempts = 0  # websocket connections tried (reconnections with back-off)
        self._service_port: ActionPort | None = None
        self._action_tasks: set[asyncio.Task[None]] = set()
        self._reconnect_max = reconnect_max
        self._task: asyncio.Task[None] | None = None
        self._seen: deque[str] = deque(maxlen=2000)
        self._since = datetime.now(UTC)

    @property
    def url(self) -> str:
        return self.client.url

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the stations (EngineUnreachableError, EngineAuthError), then follow the
        engine's events."""
        await self._refresh()
        self._task = asyncio.create_task(self._follow(), name="edge_inspector remote events")

    async def stop(self) -> None:
        await cancel(self._task, *self._action_tasks)  # no action outlives an unload
        self._task = None
        self._connected.clear()

    def add_sink(self, sink: EventSink) -> None:
        self.sinks.add(sink)

    def set_service_port(self, port: ActionPort) -> None:
        self._service_port = port

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def token_refused(self) -> bool:
        return self._token_refused

    async def _refresh(self) -> None:
        states = await self.client.stations()
        self._states = {state.station_id: state for state in states}

    # -- stations ---------------------------------------------------------------------------

    def _path(self, station_id: str) -> str:
        if station_id not in self._states:
            raise StationNotFoundError(f"no station {station_id!r}")
        return f"/api/stations/{quote(station_id, safe='')}"

    def states(self) -> list[StationState]:
        return list(self._states.values())

    def is_running(self, station_id: str) -> bool:
        state = self._states.get(station_id)
        return state is not None and state.started

    async def _command(self, path: str, body: dict[str, Any]) -> StationState:
        state = StationState.model_validate(await self.client.request("POST", path, json_body=body))
        self._states[state.station_id] = state
        return state

    async def set_enabled(self, station_id: str, enabled: bool) -> StationState:
        return await self._command(f"{self._path(station_id)}/enabled", {"enabled": enabled})

    async def set_threshold(
        self, station_id: str, class_name: str | None, confidence: float
    ) -> StationState:
        return await self._command(
            f"{self._path(station_id)}/thresholds", {"class": class_name, "confidence": confidence}
        )

    async def inspect_image(
        self,
        station_id: str,
        image: bytes,
        *,
        part_id: str | None = None,
        lot_id: str | None = None,
    ) -> InspectionResult:
        data = await self.client.request(
            "POST",
            f"{self._path(station_id)}/frames",
            params={"part_id": part_id, "lot_id": lot_id},
            data=image,
            content_type="image/jpeg",
        )
        return InspectionResult.model_validate(data)

    async def inspect_now(
        self, station_id: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        data = await self.client.request(
            "POST",
            f"{self._path(station_id)}/inspect",
            json_body={k: v for k, v in (("part_id", part_id), ("lot_id", lot_id)) if v},
        )
        return InspectionResult.model_validate(data)

    # -- history ----------------------------------------------------------------------------

    async def _stats(
        self, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.request(
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

    async def quality(
        self, *, period: str | None = None, station_id: str | None = None
    ) -> QualityReport:
        data = await self.client.request(
            "GET", "/api/quality", params={"period": period, "station_id": station_id}
        )
        return QualityReport.model_validate(data)

    def latest_quality(self) -> QualityReport | None:
        return self._quality

    async def rate_series(
        self, *, station_id: str | None, since: datetime, until: datetime, bucket: float
    ) -> list[RateBucket]:
        data = await self.client.request(
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
        data = await self.client.request(
            "GET",
            "/api/incidents",
            params={
                "station_id": station_id,
                "since": _iso(since),
                "until": _iso(until),
                "limit": max(1, min(limit, 500)),
                "offset": max(0, offset),
            },
        )
        return [Incident.model_validate(i) for i in data["incidents"]]

    async def incident(self, incident_id: str) -> Incident | None:
        try:
            data = await self.client.request("GET", f"/api/incidents/{quote(incident_id, safe='')}")
        except IncidentNotFoundError:
            return None
        return Incident.model_validate(data)

    async def last_incident(self, station_id: str | None = None) -> Incident | None:
        found = await self.incidents(station_id=station_id, limit=1)
        return found[0] if found else None

    async def incident_image(self, incident_id: str, kind: ImageKind = "frame") -> bytes:
        body: bytes = await self.client.request(
            "GET", f"/api/incidents/{quote(incident_id, safe='')}/images/{kind}", raw=True
        )
        return body

    # -- people's verdicts and decisions ----------------------------------------------------

    async def set_verdict(
        self, incident_id: str, state: IncidentState, *, by: str, note: str | None = None
    ) -> Incident:
        data = await self.client.request(
            "POST",
            f"/api/incidents/{quote(incident_id, safe='')}/verdict",
            json_body={"state": str(state), "by": by, "note": note},
        )
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

    # -- manuals and the VLM ----------------------------------------------------------------

    async def search_manuals(self, query: str, *, limit: int = 3) -> list[ManualHit]:
        from ..manuals.index import ManualHit

        data = await self.client.request(
            "GET", "/api/manuals/search", params={"q": query, "limit": limit}
        )
        if not data["indexed"]:
            raise ManualsNotIndexedError("the engine has no equipment manuals indexed")
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

    async def vlm_status(self) -> VlmStatus | None:
        health = await self.client.health()
        detail = health.get("vlm_detail")
        if health.get("vlm") is None:
            return None
        if not isinstance(detail, dict):  # an engine from before the detail
            degraded = health.get("vlm") != "ok"
            return VlmStatus(error="VLM degraded" if degraded else None)
        breaker: Literal["closed", "open", "half_open"] | None = detail.get("breaker")
        return VlmStatus(
            error=detail.get("error"),
            model_missing=bool(detail.get("model_missing")),
            breaker=breaker,
            queue_depth=detail.get("queue_depth"),
            enriched=detail.get("enriched"),
            oldest_pending_s=detail.get("oldest_pending_s"),
            skipped=detail.get("skipped"),
            coalesced=detail.get("coalesced"),
        )

    # -- events ------------------------------------------------------------------------------

    async def _set_connected(self, up: bool, error: str | None = None) -> bool:
        """Tell the sinks when the link goes down or comes back; True if it changed."""
        if up == self._connected.is_set():
            return False
        if up:
            self._connected.set()
            self._token_refused = False
            self.connection_error = None
            _LOGGER.info("engine at %s reachable again", self.url)
        else:
            self._connected.clear()
            self.connection_error = error
            _LOGGER.warning("engine at %s unreachable: %s", self.url, error)
        await self.sinks.on_connection(up)
        return True

    async def _follow(self) -> None:
        delay = 1.0
        while True:
            self.connection_attempts += 1
            refused_before = self._token_refused
            try:
                await self._session()
                delay = 1.0
                error = "the engine closed the connection"
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError, EdgeInspectorError) as exc:
                error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                # the service's token changed while we were connected (it restarted with
                # another): the owner must ask for the new one
                self._token_refused = isinstance(exc, EngineAuthError) or (
                    isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status == 401
                )
                if self._token_refused:
                    error = "the engine refused the token"
            except Exception as exc:  # a bug must not end the follower
                _LOGGER.exception("engine events from %s", self.url)
                error = f"{type(exc).__name__}: {exc}"
            told = await self._set_connected(False, error)
            if self._token_refused and not refused_before and not told:
                # down already (the service restarting), and now refusing the token
                self.connection_error = error
                _LOGGER.warning("engine at %s: %s", self.url, error)
                await self.sinks.on_connection(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max)

    async def _session(self) -> None:
        url = f"{self.client.url}/api/ws"
        params = {"since": _iso(self._since) or ""}
        if self._service_port is not None and self.client.token:
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
            if self._service_port is None:
                raise RefusedError("this client does not carry out actions")
            action = ActionConfig.model_validate(call["action"])
            context = dict(call.get("context") or {})
            result = await self._service_port.execute(
                action,
                dict(call.get("arguments") or {}),
                ActionContext(
                    station_id=str(context.get("station_id", "")),
                    incident_id=str(context.get("incident_id", "")),
                    defect_class=str(context.get("defect_class", "")),
                    severity=context.get("severity"),
                ),
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
            self._states[state.station_id] = state
            await self.sinks.on_station_state(state)
        elif kind in ("incident", "missed_defect"):
            incident = Incident.model_validate(data)
            if self._first_time(incident):
                await (
                    self.sinks.on_incident if kind == "incident" else self.sinks.on_missed_defect
                )(incident)
        elif kind == "quality":
            self._quality = QualityReport.model_validate(data)
            await self.sinks.on_quality(self._quality)
        elif kind in _PLAIN_EVENTS:
            method, model = _PLAIN_EVENTS[kind]
            await getattr(self.sinks, method)(model.model_validate(data))


# Events handed to the sinks as they come: type → (sink method, payload model).
_PLAIN_EVENTS: dict[str, tuple[str, type[BaseModel]]] = {
    "inspection": ("on_inspection", InspectionResult),
    "incident_update": ("on_incident_update", Incident),
    "alert": ("on_alert", OperatorAlert),
    "shift_report": ("on_shift_report", QualityReport),
}


if TYPE_CHECKING:
    from ..contract import InspectionEngine

    def _keeps_the_contract(engine: RemoteEngine) -> InspectionEngine:
        return engine  # checked by mypy: the service's client is an InspectionEngine
