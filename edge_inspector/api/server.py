"""The engine's HTTP API (aiohttp): REST, a websocket push channel, MJPEG, Prometheus metrics.

The routes are declared once, in `routes.py`: the server registers them from there, and
`openapi.json` next to this file (served at `/api/openapi.json`) is generated from there.
Errors are JSON `{"error": {"code", "message"}}` with a 4xx status; a handler that fails
unexpectedly answers 500 with the same shape and the service goes on. With a token configured
(required when bound beyond loopback) every path except those declared without auth
(`/api/health`, `/api/openapi.json`) needs `Authorization: Bearer <token>` (or `?token=` for
clients that cannot set headers, such as MJPEG viewers). Images are served only from the store's
image folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel

from .. import __version__
from ..annotate import annotate
from ..commands import (
    MAX_BODY_BYTES,
    EnabledBody,
    InputError,
    InspectCommand,
    MissedDefectBody,
    ResolveBody,
    ThresholdBody,
    VerdictBody,
    parse_command,
    parse_object,
)
from ..config import ActionConfig, HttpConfig
from ..errors import (
    EdgeInspectorError,
    ImageDecodeError,
    ImageNotFoundError,
    IncidentNotFoundError,
    ManualsNotIndexedError,
    ModelError,
    NotFoundError,
    SourceError,
    StationNotFoundError,
)
from ..events import (
    Incident,
    IncidentState,
    InspectionResult,
    OperatorAlert,
    QualityReport,
    StationState,
)
from ..frames import encode_jpeg
from ..sinks import EventSink
from ..tools.actions import ActionContext, ActionError
from .metrics import Metrics
from .routes import ROUTES

if TYPE_CHECKING:
    from ..engine import Engine
    from ..mqtt.bridge import MqttBridge

__all__ = ["ApiServer"]

_LOGGER = logging.getLogger(__name__)
EVENT_TYPES = (
    "inspection",
    "incident",
    "incident_update",
    "missed_defect",
    "station_state",
    "alert",
    "quality",
    "shift_report",
)
# The engine's errors as answers (status, code), the first that fits; a client raises the same
# type again from the code (api/client.py).
_ERROR_ANSWERS: dict[type[EdgeInspectorError], tuple[int, str]] = {
    StationNotFoundError: (404, "station_not_found"),
    IncidentNotFoundError: (404, "incident_not_found"),
    ImageNotFoundError: (404, "image_not_found"),
    NotFoundError: (404, "not_found"),
    ModelError: (409, "model_error"),
    ImageDecodeError: (422, "bad_image"),
    SourceError: (422, "source"),
    EdgeInspectorError: (409, "refused"),  # a command the engine will not carry out now
}
_SHUTDOWN_TIMEOUT_S = 5.0  # what a stop waits for the requests and websockets still open
_OPEN_PATHS = frozenset(route.path for route in ROUTES if not route.auth)  # no token needed
_CLIENT_QUEUE = 1000

type Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it could not even parse (a bad request line, bytes no header may
    hold) as an error with a traceback, after answering it 400. It is the client's fault, and
    a hostile client must not fill the log with tracebacks: one line, at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "HTTP API: refused a malformed request (%s)", (exc.message,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_SERVER_LOGGER = logging.getLogger("aiohttp.server")
if not any(isinstance(f, _MalformedRequestFilter) for f in _SERVER_LOGGER.filters):
    _SERVER_LOGGER.addFilter(_MalformedRequestFilter())


_TIMEOUT_BODY = b'{"error": {"code": "timeout", "message": "the request headers took too long"}}'
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class _HeaderDeadline(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a deadline for the first request's headers:
    a client that connects and says nothing, or sends half a header and stalls (slowloris), is
    answered 408 and disconnected. (aiohttp's keep-alive timeout closes a connection idle after
    a response, but before 3.14 not one that never finished its first request.) Only asyncio's
    public protocol interface is used: the bytes are passed on untouched."""

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (not always an asyncio.Transport subclass: uvloop's is its own)
        self._transport = cast("asyncio.Transport", transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            if b"\r\n\r\n" in self._tail + data:  # the headers are in: the request's now
                self._timer.cancel()
                self._timer = None
            self._tail = (self._tail + data)[-3:]
        self._inner.data_received(data)

    def _expired(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_TIMEOUT_408)
            self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Runner(web.AppRunner):
    """An AppRunner whose sites build each connection's protocol with `_HeaderDeadline`."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    @property
    def server(self) -> Any:  # the protocol factory the sites listen with
        inner = super().server
        if inner is None:
            return None
        return lambda: _HeaderDeadline(inner(), self._header_timeout)


class ApiError(Exception):
    """A request the API refuses: its status, code and message go back as JSON."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _since(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        # in UTC now: a time zone that pushes it before year 1 or past 9999 is refused here
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ApiError(
            400, "invalid_parameter", f"{name}: not an ISO 8601 time: {text[:64]!r}"
        ) from None


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name}: not an integer: {text!r}") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"{name}: must be {low} to {high}")
    return value


def _range(request: web.Request) -> dict[str, Any]:
    """The station and time range query parameters most queries take."""
    return {
        "station_id": _query_text(request, "station_id"),
        "since": _since(request, "since"),
        "until": _since(request, "until"),
    }


def _page(request: web.Request) -> dict[str, Any]:
    """`_range` and the page: limit (1-500, default 50) and offset."""
    return {
        **_range(request),
        "limit": _int(request, "limit", 50, 1, 500),
        "offset": _int(request, "offset", 0, 0, 10_000_000),
    }


def _address_or_localhost(host: str) -> bool:
    """Is the Host header's name an IP address or localhost (not a DNS name)?"""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _body[M: BaseModel](request: web.Request, model: type[M]) -> M:
    """The request's JSON body as `model`, strictly (`commands`); no body is `{}`."""
    if request.can_read_body and request.content_type != "application/json":
        # A browser page may send text/plain anywhere without asking first (no preflight); JSON
        # it may only send where the server allows it, and we allow no other site.
        raise ApiError(415, "unsupported_media_type", "send JSON, Content-Type application/json")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"a JSON body is at most {MAX_BODY_BYTES} bytes")
    raw = await request.read() if request.can_read_body else b""
    return parse_command(model, parse_object(raw))


def _query_text(request: web.Request, name: str, limit: int = 128) -> str | None:
    text = request.query.get(name) or None
    if text is not None and len(text) > limit:
        raise ApiError(400, "invalid_parameter", f"{name}: at most {limit} characters")
    return text


class _Client:
    """One websocket subscriber: a bounded queue of messages for it."""

    def __init__(self, events: frozenset[str], *, executes_actions: bool = False) -> None:
        self.events = events
        self.executes_actions = executes_actions
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=_CLIENT_QUEUE)
        self.overflowed = False  # too slow: closed with 1013

    def send_now(self, message: str) -> None:
        """A message for this client whatever it subscribed to (an action call)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(message)

    def offer(self, kind: str, message: str) -> None:
        if kind not in self.events or self.overflowed:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True  # too slow: it is closed and catches up from the store
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class ClientActionPort:
    """`service` action targets carried out by a connected client: Home Assistant in remote
    mode runs them as it does in-process, and answers with the outcome."""

    def __init__(self, server: ApiServer, timeout: float = 30.0) -> None:
        self._server = server
        self._timeout = timeout
        self._calls: dict[str, asyncio.Future[tuple[bool, str]]] = {}

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str:
        executors = [c for c in self._server.clients if c.executes_actions]
        if not executors:
            raise ActionError(
                f"no Home Assistant is connected to carry out {action.target.type} actions"
            )
        call_id = uuid.uuid4().hex
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        message = json.dumps(
            {
                "type": "action_call",
                "data": {
                    "call_id": call_id,
                    "action": action.model_dump(mode="json"),
                    "arguments": arguments,
                    "context": context.as_dict(),
                },
            }
        )
        executors[0].send_now(message)
        try:
            async with asyncio.timeout(self._timeout):
                ok, text = await future
        except TimeoutError:
            raise ActionError(
                f"Home Assistant did not answer within {self._timeout:.0f} s"
            ) from None
        finally:
            self._calls.pop(call_id, None)
        if not ok:
            raise ActionError(text)
        return text

    def answer(self, data: dict[str, Any]) -> None:
        future = self._calls.get(str(data.get("call_id")))
        if future is not None and not future.done():
            ok = bool(data.get("ok"))
            future.set_result((ok, str(data.get("result") if ok else data.get("error"))))


class ApiServer(EventSink):
    """Serves one engine over HTTP; an event sink, for the push channel and the metrics."""

    send_timeout_s = 10.0  # a websocket client that takes nothing for this long is too slow
    header_timeout_s = 10.0  # a request's headers must be in this long after connecting
    idle_timeout_s = 15.0  # a keep-alive connection with no request for this long is closed

    def __init__(
        self, engine: Engine, config: HttpConfig, *, bridge: MqttBridge | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.bridge = bridge
        self.metrics = Metrics()
        self.actions = ClientActionPort(self)
        engine.action_ports.setdefault("service", self.actions)
        self._token = config.effective_token
        self.clients: set[_Client] = set()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._started = time.monotonic()
        self.url: str | None = None
        self.app = self._make_app()

    # -- life -------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors, self._same_site, self._auth],
            client_max_size=int(self.config.max_upload_mb * 1024 * 1024),
        )
        r = app.router
        for route in ROUTES:  # every route is declared there, and so described in openapi.json
            handler = getattr(self, route.handler)
            if route.method == "get":
                r.add_get(route.path, handler)  # and HEAD
            else:
                r.add_post(route.path, handler)
        return app

    async def start(self) -> str:
        """Listen; the base URL (the real port when the configuration says 0)."""
        self._closing.clear()
        self._runner = _Runner(
            self.app,
            header_timeout=self.header_timeout_s,
            keepalive_timeout=self.idle_timeout_s,
            access_log=None,
            handle_signals=False,
            # a client that stops answering (its websocket's close) does not hold up a stop
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise EdgeInspectorError(
                f"HTTP API: cannot listen on {self.config.host}:{self.config.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        addresses = self._runner.addresses
        port = addresses[0][1] if addresses else self.config.port
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"http://{host}:{port}"
        _LOGGER.info("HTTP API on %s", self.url)
        return self.url

    async def stop(self) -> None:
        self._closing.set()
        for client in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middlewares ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (ApiError, InputError) as exc:  # the request's fault: its status and code
            return _error(exc.status, exc.code, str(exc))
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            raise
        except EdgeInspectorError as exc:
            status, code = next(
                answer for kind, answer in _ERROR_ANSWERS.items() if isinstance(exc, kind)
            )
            return _error(status, code, str(exc))
        except TimeoutError:
            return _error(504, "timeout", "the station did not answer in time")
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            _LOGGER.exception("HTTP API: %s %s failed", request.method, request.path)
            return _error(500, "internal", "internal error (logged by the engine)")

    @web.middleware
    async def _same_site(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Requests from other sites' pages in a browser are refused: an `Origin` (which
        browsers send with every cross-site fetch, form post and websocket) must be this
        server's own. Without a token the server trusts its loopback clients, so it also
        insists that the Host is an address or `localhost`: a name that resolves to 127.0.0.1
        only for an attacker's page (DNS rebinding) is refused."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            return _error(403, "cross_site", "requests from other sites' pages are refused")
        if not self._token and not _address_or_localhost(request.host):
            return _error(403, "bad_host", f"unknown host {request.host!r} (no token is set)")
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token and request.path not in _OPEN_PATHS:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else ""  # any case (RFC 9110)
            given = given or request.query.get("token", "")
            # bytes that are not UTF-8 arrive as surrogates: compared as they came, never a 500
            if not hmac.compare_digest(
                given.encode("utf-8", "surrogateescape"), self._token.encode()
            ):
                return _error(401, "unauthorized", "a valid bearer token is required")
        return await handler(request)

    # -- helpers ----------------------------------------------------------------------------

    def _station_state(self, station_id: str) -> StationState:
        if station_id in self.engine.stations:
            return self.engine.stations[station_id].state()
        if station_id in self.engine.failed:
            return self.engine.failed[station_id]
        raise ApiError(404, "station_not_found", f"no station {station_id!r}")

    async def _incident(self, request: web.Request) -> Incident:
        incident = await self.engine.store.incident(request.match_info["incident_id"])
        if incident is None:
            raise ApiError(404, "incident_not_found", "no such incident")
        return incident

    # -- handlers ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        states = self.engine.states()
        stations = {
            s.station_id: "ok" if s.available and not s.error else (s.error or "unavailable")
            for s in states
        }
        vlm_status = await self.engine.vlm_status()
        vlm = None if vlm_status is None else ("ok" if vlm_status.ok else "degraded")
        mqtt = None
        if self.bridge is not None:
            mqtt = "connected" if self.bridge.connected.is_set() else "disconnected"
        degraded = (
            any(v != "ok" for v in stations.values())
            or vlm == "degraded"
            or (mqtt == "disconnected")
        )
        return _json(
            {
                "status": "degraded" if degraded else "ok",
                "version": __version__,
                "uptime_s": round(time.monotonic() - self._started, 1),
                "stations": stations,
                "vlm": vlm,
                # what a client of the service shows (Home Assistant's repairs, diagnostics)
                "vlm_detail": None if vlm_status is None else dataclasses.asdict(vlm_status),
                "mqtt": mqtt,
            }
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        text = self.metrics.render(self.engine, self.bridge, len(self.clients))
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def openapi(self, request: web.Request) -> web.Response:
        text = resources.files("edge_inspector.api").joinpath("openapi.json").read_text()
        return web.Response(text=text, content_type="application/json")

    async def stations(self, request: web.Request) -> web.Response:
        return _json({"stations": [s.model_dump(mode="json") for s in self.engine.states()]})

    async def station(self, request: web.Request) -> web.Response:
        return _json(self._station_state(request.match_info["station_id"]).model_dump(mode="json"))

    async def set_enabled(self, request: web.Request) -> web.Response:
        sid = request.match_info["station_id"]
        self._station_state(sid)
        body = await _body(request, EnabledBody)
        state = await self.engine.set_enabled(sid, body.enabled)
        return _json(state.model_dump(mode="json"))

    async def set_threshold(self, request: web.Request) -> web.Response:
        sid = request.match_info["station_id"]
        self._station_state(sid)
        body = await _body(request, ThresholdBody)
        name = body.class_name
        station = self.engine.station(sid)
        if name is not None and name not in station.rules.thresholds:
            known = ", ".join(sorted(station.rules.thresholds))
            raise ApiError(400, "invalid_field", f"class: {name!r} is not one of {known}")
        state = await self.engine.set_threshold(sid, name, body.confidence)
        return _json(state.model_dump(mode="json"))

    async def inspect(self, request: web.Request) -> web.Response:
        sid = request.match_info["station_id"]
        self._station_state(sid)
        body = await _body(request, InspectCommand)
        result = await self.engine.inspect_now(sid, part_id=body.part_id, lot_id=body.lot_id)
        return _json(result.model_dump(mode="json"))

    async def push_frame(self, request: web.Request) -> web.Response:
        """A picture taken elsewhere (a Home Assistant camera) for a `push` station."""
        sid = request.match_info["station_id"]
        self._station_state(sid)
        image = await request.read()
        if not image:
            raise ApiError(400, "missing_image", "send the picture (JPEG or PNG) as the body")
        station = self.engine.station(sid)
        result = await station.inspect_image(
            image,
            part_id=_query_text(request, "part_id"),
            lot_id=_query_text(request, "lot_id"),
        )
        return _json(result.model_dump(mode="json"))

    async def _annotated(self, station_id: str) -> tuple[int, bytes] | None:
        self._station_state(station_id)
        station = self.engine.stations.get(station_id)
        if station is None or station.last_view is None:
            return None
        seq = station.view_seq
        frame, detections = station.last_view
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(
            None, lambda: encode_jpeg(annotate(frame.image, detections), 80)
        )
        return seq, data

    async def snapshot(self, request: web.Request) -> web.Response:
        view = await self._annotated(request.match_info["station_id"])
        if view is None:
            raise ApiError(404, "no_frame", "the station has not inspected a frame yet")
        return web.Response(
            body=view[1], content_type="image/jpeg", headers={"Cache-Control": "no-store"}
        )

    async def mjpeg(self, request: web.Request) -> web.StreamResponse:
        """The station's annotated live view as multipart JPEG, at most `mjpeg_fps` a second."""
        sid = request.match_info["station_id"]
        self._station_state(sid)
        response = web.StreamResponse(
            headers={
                "Content-Type": "multipart/x-mixed-replace; boundary=frame",
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        period = 1.0 / self.config.mjpeg_fps
        sent = -1
        try:
            while not self._closing.is_set():
                station = self.engine.stations.get(sid)
                if station is not None and station.view_seq != sent:
                    view = await self._annotated(sid)
                    if view is not None:
                        sent, data = view
                        head = (
                            "--frame\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(data)}\r\n\r\n"
                        ).encode()
                        await response.write(head + data + b"\r\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), period)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    async def inspections(self, request: web.Request) -> web.Response:
        verdict = request.query.get("verdict")
        if verdict not in (None, "pass", "fail"):
            raise ApiError(400, "invalid_parameter", "verdict: pass or fail")
        page = _page(request)
        rows = await self.engine.store.inspections(verdict=verdict, **page)
        return _json({"inspections": rows, "limit": page["limit"], "offset": page["offset"]})

    async def inspection(self, request: web.Request) -> web.Response:
        found = await self.engine.store.inspection(request.match_info["inspection_id"])
        if found is None:
            raise ApiError(404, "inspection_not_found", "no such inspection (or it was not kept)")
        return _json(found.model_dump(mode="json"))

    async def stats(self, request: web.Request) -> web.Response:
        """Counts for a station (or all) in a time range: inspections, failures, incidents by
        class, operators' verdicts."""
        span = _range(request)
        store = self.engine.store
        counts = await store.inspection_counts(**span)
        by_class = await store.counts_by_class(**span)
        feedback = await store.feedback_counts(**span)
        return _json(
            {
                "inspections": counts.inspections,
                "failed": counts.failed,
                "by_class": {c.defect_class: c.count for c in by_class},
                "feedback": {
                    "confirmed": feedback.confirmed,
                    "rejected": feedback.rejected,
                    "missed": feedback.missed,
                },
            }
        )

    async def quality(self, request: web.Request) -> web.Response:
        """The quality figures over a range said in words (`edge_inspector.quality`)."""
        period = request.query.get("period") or None
        station_id = request.query.get("station_id") or None
        report = await self.engine.quality(period=period, station_id=station_id)
        return _json(report.model_dump(mode="json"))

    async def series(self, request: web.Request) -> web.Response:
        """Inspections, failures and incidents per time bucket (a defect-rate chart)."""
        span = _range(request)
        if span["since"] is None:
            raise ApiError(400, "missing_parameter", "since is required")
        span["until"] = span["until"] or datetime.now(UTC)
        bucket = _int(request, "bucket_s", 900, 10, 86_400)
        if (span["until"] - span["since"]).total_seconds() / bucket > 10_000:
            raise ApiError(400, "invalid_parameter", "at most 10000 buckets")
        points = await self.engine.store.rate_series(bucket=bucket, **span)
        return _json(
            {
                "bucket_s": bucket,
                "points": [
                    {
                        "start": p.start.isoformat(),
                        "inspections": p.inspections,
                        "failed": p.failed,
                        "incidents": p.incidents,
                    }
                    for p in points
                ],
            }
        )

    async def manual_search(self, request: web.Request) -> web.Response:
        query = (_query_text(request, "q", 500) or "").strip()
        if not query:
            raise ApiError(400, "missing_parameter", "q (what to look for) is required")
        limit = _int(request, "limit", 3, 1, 20)
        try:
            hits = await self.engine.search_manuals(query, limit=limit)
        except ManualsNotIndexedError:
            hits = []
        return _json(
            {
                "indexed": self.engine.manuals is not None,
                "results": [
                    {
                        "reference": h.reference,
                        "file": h.file,
                        "section": h.section,
                        "page": h.page,
                        "excerpt": h.excerpt,
                        "score": h.score,
                    }
                    for h in hits
                ],
            }
        )

    async def missed_defect(self, request: web.Request) -> web.Response:
        """A defect a person found that a station passed (false-accept rate)."""
        body = await _body(request, MissedDefectBody)
        self._station_state(body.station_id)
        incident = await self.engine.report_missed_defect(
            body.station_id,
            body.defect_class,
            by=body.by,
            part_id=body.part_id,
            lot_id=body.lot_id,
            note=body.note,
        )
        return _json(incident.model_dump(mode="json"), status=201)

    async def incidents(self, request: web.Request) -> web.Response:
        page = _page(request)
        found = await self.engine.store.incidents(**page)
        return _json(
            {
                "incidents": [i.model_dump(mode="json") for i in found],
                "limit": page["limit"],
                "offset": page["offset"],
            }
        )

    async def incident(self, request: web.Request) -> web.Response:
        return _json((await self._incident(request)).model_dump(mode="json"))

    async def incident_image(self, request: web.Request) -> web.StreamResponse:
        incident = await self._incident(request)
        kind = request.match_info["kind"]
        try:
            stored = incident.image_path(kind)
        except KeyError:
            raise ApiError(404, "unknown_image", "images are frame, crop or raw") from None
        path = self.engine.store.image_file(stored)
        if path is None:
            raise ApiError(404, "image_not_found", f"the incident has no {kind} image (kept)")
        return web.FileResponse(path, headers={"Content-Type": "image/jpeg"})

    async def verdict(self, request: web.Request) -> web.Response:
        body = await _body(request, VerdictBody)
        updated = await self.engine.set_verdict(
            request.match_info["incident_id"], IncidentState(body.state), by=body.by, note=body.note
        )
        return _json(updated.model_dump(mode="json"))

    async def resolve_action(self, request: web.Request) -> web.Response:
        body = await _body(request, ResolveBody)
        record = await self.engine.resolve_action(
            request.match_info["incident_id"],
            request.match_info["request_id"],
            approve=body.approve,
            by=body.by,
        )
        return _json(record.model_dump(mode="json"))

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """Live events: `{"type": ..., "data": ...}`. `?events=incident,station_state` picks
        types; `?since=ISO` first replays the incidents stored since then (catch-up after a
        disconnection), each as `incident`, then `{"type": "ready"}`."""
        wanted = request.query.get("events")
        events = frozenset(wanted.split(",")) if wanted else frozenset(EVENT_TYPES)
        unknown = events - set(EVENT_TYPES)
        if unknown:
            raise ApiError(400, "invalid_parameter", f"events: unknown {sorted(unknown)}")
        since = _since(request, "since")
        executes_actions = request.query.get("actions") == "1"
        if executes_actions and not self._token:
            # the client that carries out actions (Home Assistant's services) must prove who it
            # is: set a token on the engine and give it to the integration
            raise ApiError(
                403, "token_required", "carrying out actions needs a token on the engine"
            )
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        client = _Client(events, executes_actions=executes_actions)
        self.clients.add(client)  # before the replay: nothing falls between the two
        try:
            await self._greet(ws, since)
            await self._pump(ws, client, request)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.clients.discard(client)
            if not ws.closed:
                await ws.close()
        return ws

    async def _greet(self, ws: web.WebSocketResponse, since: datetime | None) -> None:
        """A new client's first messages: every station's state, the incidents stored since
        `since` (oldest first, `replay: true`), then `ready`."""
        for state in self.engine.states():
            await ws.send_str(
                json.dumps({"type": "station_state", "data": state.model_dump(mode="json")})
            )
        if (quality := self.engine.latest_quality()) is not None:
            await ws.send_str(
                json.dumps({"type": "quality", "data": quality.model_dump(mode="json")})
            )
        offset = 0
        while since is not None:
            page = await self.engine.store.incidents(since=since, limit=200, offset=offset)
            for incident in reversed(page):
                if self.engine.sinks.is_held(incident.incident_id):
                    continue  # told live once the VLM has judged it (`vlm_hold`)
                kind = "missed_defect" if incident.extra.get("missed") else "incident"
                data = incident.model_dump(mode="json")
                await ws.send_str(json.dumps({"type": kind, "replay": True, "data": data}))
            if len(page) < 200:
                break
            offset += 200
        await ws.send_str(json.dumps({"type": "ready"}))

    async def _pump(self, ws: web.WebSocketResponse, client: _Client, request: web.Request) -> None:
        """The live events to a client until it goes, the server stops, or it falls behind
        (closed with 1013)."""
        reader = asyncio.create_task(self._read_client(ws, client))
        try:
            while True:
                getter = asyncio.create_task(client.queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                message = getter.result()
                if message is None and not client.overflowed:
                    return  # the server is stopping
                if message is None or not await self._send(ws, message):
                    client.overflowed = True
                    await self._close_slow(ws, request)
                    return
        finally:
            reader.cancel()

    async def _send(self, ws: web.WebSocketResponse, message: str) -> bool:
        """Send, unless the client has not taken what was sent before within `send_timeout_s`
        (its socket's buffers are full): False then."""
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await ws.send_str(message)
        except TimeoutError:
            return False
        return True

    async def _close_slow(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        """Close a client that fell behind with 1013 ("try again later": it reconnects with
        `since` and catches up from the store). The close frame follows what was already sent;
        a client that takes none of it within `send_timeout_s` is disconnected."""
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await ws.close(code=1013, message=b"too slow: reconnect with since")
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()

    async def _read_client(self, ws: web.WebSocketResponse, client: _Client) -> None:
        """What the client sends: answers to action calls; return when it goes."""
        async for message in ws:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
            if message.type is not WSMsgType.TEXT or not client.executes_actions:
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "action_result":
                self.actions.answer(data)

    # -- EventSink --------------------------------------------------------------------------

    def _broadcast(self, kind: str, payload: Any) -> None:
        if not self.clients:
            return
        message = json.dumps({"type": kind, "data": payload.model_dump(mode="json")})
        for client in list(self.clients):
            client.offer(kind, message)

    async def on_inspection(self, result: InspectionResult) -> None:
        self.metrics.inspection(result)
        self._broadcast("inspection", result)

    async def on_incident(self, incident: Incident) -> None:
        self.metrics.incident(incident)
        self._broadcast("incident", incident)

    async def on_incident_update(self, incident: Incident) -> None:
        self._broadcast("incident_update", incident)

    async def on_missed_defect(self, incident: Incident) -> None:
        self._broadcast("missed_defect", incident)

    async def on_station_state(self, state: StationState) -> None:
        self._broadcast("station_state", state)

    async def on_alert(self, alert: OperatorAlert) -> None:
        self._broadcast("alert", alert)

    async def on_quality(self, report: QualityReport) -> None:
        self._broadcast("quality", report)

    async def on_shift_report(self, report: QualityReport) -> None:
        self._broadcast("shift_report", report)
