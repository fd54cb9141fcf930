"""Runs the agent off the detection path: a bounded queue, a concurrency limit, a circuit
breaker, and retries from the store.

An incident leaves the station at once with `vlm: pending`. This sink queues its id; a worker
asks the agent and writes the result back to the store (changing only the `vlm` field, so an
operator's acknowledgement in the meantime stands), then tells the sinks with
`on_incident_update`. When Ollama is down the incident is marked `unavailable`; a sweep re-reads
pending and unavailable incidents from the store every `retry_interval`, which also covers a
full queue and a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from ..config import EngineConfig
from ..errors import EdgeInspectorError
from ..events import ActionRecord, ActionStatus, Incident, VlmResult, VlmStatus
from ..sinks import EventSink
from ..store import Store
from ..tasks import cancel
from ..tools.actions import ActionContext
from . import prompts
from .agent import VlmAgent
from .client import VlmModelMissingError, VlmUnavailableError

__all__ = ["CircuitBreaker", "IncidentEnricher", "pending_result"]

_LOGGER = logging.getLogger(__name__)


def pending_result(model: str) -> VlmResult:
    return VlmResult(
        status=VlmStatus.PENDING,
        model=model,
        prompt_version=prompts.PROMPT_VERSION,
        updated_at=datetime.now(UTC),
    )


class CircuitBreaker:
    """Closed: calls go through. `failures` in a row open it for `cooldown` seconds; then one
    probe is let through (half-open): success closes it, failure opens it again."""

    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() >= self._opened_at + self._cooldown:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._probing or self._clock() < self._opened_at + self._cooldown:
            return False
        self._probing = True
        return True

    def success(self) -> bool:
        """Record a success; True when this closed an open breaker."""
        was_open = self._opened_at is not None
        self._failures, self._opened_at, self._probing = 0, None, False
        return was_open

    def failure(self) -> bool:
        """Record a failure; True when this opened the breaker."""
        self._failures += 1
        if self._probing:
            self._opened_at, self._probing = self._clock(), False
            return False
        if self._opened_at is None and self._failures >= self._threshold:
            self._opened_at = self._clock()
            return True
        return False


def _prepare_image(path: str | None, max_side: int, quality: int) -> bytes | None:
    if not path:
        return None
    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else None
    if data is None or not data.size:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        image = cv2.resize(
            image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return bytes(buf.tobytes()) if ok else None


class IncidentEnricher(EventSink):
    """The VLM side of the engine. Add it to the engine's sinks and `start()` it."""

    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        sink: EventSink,
        agent: VlmAgent,
        *,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.vlm = config.vlm
        self._store = store
        self._sink = sink
        self.agent = agent
        self._executor = executor
        self._stations = {s.id: s for s in config.stations}
        self.breaker = CircuitBreaker(self.vlm.breaker.failures, self.vlm.breaker.cooldown, clock)
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=self.vlm.queue_size)
        self._known: set[str] = set()  # queued or in flight
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.enriched = 0
        self.unavailable = 0
        self.last_error: str | None = None
        self.model_missing = False  # the last failure: the server lacks the model
        self.idle = asyncio.Event()

    @property
    def queue_depth(self) -> int:
        return len(self._known)

    @property
    def queued(self) -> int:
        """Incidents waiting for the VLM."""
        return self._queue.qsize()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"edge_inspector vlm worker {i}")
            for i in range(self.vlm.concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._sweeper(), name="edge_inspector vlm sweep"))

    async def stop(self) -> None:
        await cancel(*self._tasks)
        self._tasks = []
        await self.agent.vlm.close()

    # -- intake ---------------------------------------------------------------------------

    def _offer(self, incident_id: str) -> bool:
        if incident_id in self._known:
            return True
        try:
            self._queue.put_nowait(incident_id)
        except asyncio.QueueFull:
            return False  # it stays pending in the store; the sweep takes it later
        self._known.add(incident_id)
        self.idle.clear()
        return True

    async def on_incident(self, incident: Incident) -> None:
        if incident.vlm is not None and incident.vlm.status == VlmStatus.PENDING:
            self._offer(incident.incident_id)

    async def _sweeper(self) -> None:
        first = True
        while True:
            if self.breaker.state != "open":
                if self.agent.profile is None and self.breaker.allow():
                    await self._check_server(first)
                if self.agent.profile is not None:
                    await self._offer_pending()
            first = False
            if not self._known:
                self.idle.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.vlm.retry_interval):
                    await self._wake.wait()

    async def _offer_pending(self) -> None:
        try:
            for ident in await self._store.incidents_awaiting_vlm(self.vlm.queue_size):
                if not self._offer(ident):
                    break
        except EdgeInspectorError as exc:
            _LOGGER.error("VLM: cannot read pending incidents: %s", exc)

    async def _check_server(self, first: bool) -> None:
        try:
            profile = await self.agent.prepare()
        except VlmUnavailableError as exc:
            self._failed(exc)
            return
        self._recovered()
        if first:
            _LOGGER.info(
                "VLM ready: %s at %s (%s)",
                profile.name,
                self.agent.vlm.host,
                ", ".join(profile.capabilities or ("capabilities unknown",)),
            )

    def _failed(self, exc: EdgeInspectorError) -> None:
        message = str(exc)
        self.model_missing = isinstance(exc, VlmModelMissingError)
        opened = self.breaker.failure()
        if message != self.last_error or opened:
            _LOGGER.error("VLM unavailable: %s", message)
        self.last_error = message

    def _recovered(self) -> None:
        if self.breaker.success() or self.last_error is not None:
            _LOGGER.info("VLM available again at %s", self.agent.vlm.host)
        self.last_error = None
        self.model_missing = False

    # -- work -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            ident = await self._queue.get()
            try:
                await self._enrich(ident)
            except asyncio.CancelledError:
                raise
            except Exception:  # one incident must not stop the worker
                _LOGGER.exception("VLM: enriching incident %s failed", ident)
            finally:
                self._known.discard(ident)
                if not self._known:
                    self.idle.set()

    async def _images(self, incident: Incident) -> list[bytes]:
        loop = asyncio.get_running_loop()
        out = []
        for stored in (incident.crop_path, incident.frame_path):
            found = self._store.image_file(stored)
            path = None if found is None else str(found)
            data = await loop.run_in_executor(
                self._executor, _prepare_image, path, self.vlm.image_max_side, self.vlm.jpeg_quality
            )
            if data is not None:
                out.append(data)
        return out

    async def _enrich(self, ident: str) -> None:
        incident = await self._store.incident(ident)
        if incident is None or incident.vlm is None:
            return
        if incident.vlm.status not in (VlmStatus.PENDING, VlmStatus.UNAVAILABLE):
            return
        station = self._stations.get(incident.station_id)
        if station is None:
            return
        if not self.breaker.allow():
            await self._mark_unavailable(incident, self.last_error or "Ollama is not answering")
            return
        try:
            outcome = await self.agent.run(incident, station, await self._images(incident))
        except VlmUnavailableError as exc:
            self.agent.profile = None  # check the server and model again before the next try
            self._failed(exc)
            await self._mark_unavailable(incident, str(exc))
            return
        self._recovered()
        updated = await self._store.modify_incident(
            ident, lambda current: current.model_copy(update={"vlm": outcome.result})
        )
        if updated is None:
            return
        self.enriched += 1
        await self._sink.on_incident_update(updated)
        for alert in outcome.alerts:
            await self._sink.on_alert(alert)

    async def _mark_unavailable(self, incident: Incident, error: str) -> None:
        self.unavailable += 1
        assert incident.vlm is not None
        if incident.vlm.status == VlmStatus.UNAVAILABLE and incident.vlm.error == error:
            return  # nothing new to tell
        result = incident.vlm.model_copy(
            update={
                "status": VlmStatus.UNAVAILABLE,
                "error": error,
                "attempts": incident.vlm.attempts + 1,
                "updated_at": datetime.now(UTC),
            }
        )

        def change(current: Incident) -> Incident | None:
            if current.vlm is None or current.vlm.status not in (
                VlmStatus.PENDING,
                VlmStatus.UNAVAILABLE,
            ):
                return None
            return current.model_copy(update={"vlm": result})

        updated = await self._store.modify_incident(incident.incident_id, change)
        if updated is not None and updated.vlm == result:
            await self._sink.on_incident_update(updated)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until nothing is queued or in flight (tests, the demo's end)."""
        async with asyncio.timeout(timeout):
            while self._known:
                self.idle.clear()
                await self.idle.wait()

    def retry_now(self) -> None:
        """Sweep the store for pending incidents now (after the breaker's cool-down)."""
        self._wake.set()

    # -- human decisions on `confirm` actions ----------------------------------------------

    async def resolve_action(
        self, incident_id: str, request_id: str, *, approve: bool, by: str
    ) -> ActionRecord:
        incident = await self._store.incident(incident_id)
        if incident is None or incident.vlm is None:
            raise EdgeInspectorError(f"no incident {incident_id} with VLM actions")
        request = next(
            (
                a
                for a in incident.vlm.actions
                if a.request_id == request_id and a.status == ActionStatus.AWAITING_CONFIRMATION
            ),
            None,
        )
        if request is None:
            raise EdgeInspectorError(
                f"incident {incident_id} has no action {request_id} awaiting confirmation"
            )
        decided = {
            a.request_id
            for a in incident.vlm.actions
            if a.status in (ActionStatus.APPROVED, ActionStatus.DECLINED, ActionStatus.EXECUTED)
            and a.request_id
        }
        if request_id in decided:
            raise EdgeInspectorError(f"action {request_id} was already decided")
        context = ActionContext(
            incident.station_id,
            incident.incident_id,
            incident.defect_class,
            str(incident.vlm.classification.severity) if incident.vlm.classification else None,
        )
        if approve:
            record = await self.agent.guard.approve(request, context, by=by)
        else:
            record = ActionRecord(
                tool=request.tool,
                arguments=request.arguments,
                status=ActionStatus.DECLINED,
                detail="declined by a human",
                at=datetime.now(UTC),
                request_id=request_id,
                by=by,
            )

        def change(current: Incident) -> Incident | None:
            if current.vlm is None:
                return None
            vlm = current.vlm.model_copy(update={"actions": (*current.vlm.actions, record)})
            return current.model_copy(update={"vlm": vlm})

        updated = await self._store.modify_incident(incident_id, change)
        if updated is not None:
            await self._sink.on_incident_update(updated)
        return record
