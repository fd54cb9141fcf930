"""Runs the agent off the detection path: a bounded backlog, a concurrency limit, a circuit
breaker, and retries from the store.

An incident leaves the station at once with `vlm: pending`. This sink offers it to the backlog
(`backlog.py`: priorities, repeats coalesced, bounded); a worker takes the group that goes
next, asks the agent about its first incident and writes the result back to the store
(changing only the `vlm` field, so an operator's acknowledgement in the meantime stands), then
tells the sinks with `on_incident_update`. The group's repeats get a copy of the answer that
names the incident it came from (`coalesced_with`), without its actions. An incident that
waited longer than `vlm.max_age` when its turn comes is marked `skipped` with the reason. When
Ollama is down the incident is marked `unavailable`; a sweep re-reads pending and unavailable
incidents from the store every `retry_interval`, which also covers what a full backlog let go
and a restart. Every incident so ends `done` (or `invalid`, `failed`), `skipped`, or still
`pending` in the store, where it is counted (`oldest_pending_s`): none is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
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
from .backlog import Backlog, Group, Waiting
from .client import VlmModelMissingError, VlmUnavailableError
from .verdict import verdict_of

__all__ = ["CircuitBreaker", "IncidentEnricher", "pending_result"]

_LOGGER = logging.getLogger(__name__)

# the statuses of an incident the model has not answered yet
_WAITING = (VlmStatus.PENDING, VlmStatus.UNAVAILABLE)


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
        now: Callable[[], datetime] = _utc_now,
        on_backlog: Callable[[str], None] | None = None,
    ) -> None:
        """`clock` times the breaker, `now` the incidents' waits (against their `created_at`);
        `on_backlog(station_id)` is called when a station's incidents join or leave the
        backlog (its state shows them)."""
        self.config = config
        self.vlm = config.vlm
        self._store = store
        self._sink = sink
        self.agent = agent
        self._executor = executor
        self._now = now
        self._on_backlog = on_backlog
        self._stations = {s.id: s for s in config.stations}
        self.breaker = CircuitBreaker(self.vlm.breaker.failures, self.vlm.breaker.cooldown, clock)
        self.backlog = Backlog(
            self.vlm.queue_size,
            policy=self.vlm.backlog_policy,
            coalesce_window=self.vlm.coalesce_window,
            priority_confidence=self.vlm.priority_confidence,
        )
        self.max_age = (self.vlm.max_age or None) if self.vlm.backlog_policy else None
        # Pending in the store but not in the backlog (a full backlog let them go): by id,
        # their station and time, so the oldest wait is told. The sweep offers them again.
        self._in_store: dict[str, tuple[str, datetime]] = {}
        self._ready = asyncio.Event()  # the backlog has a group to answer
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.enriched = 0
        self.unavailable = 0
        self.skipped = 0  # over `max_age`
        self.coalesced = 0  # answered by a repeat's call
        self.displaced = 0  # let go, or refused, by a full backlog: left pending in the store
        self.last_error: str | None = None
        self.model_missing = False  # the last failure: the server lacks the model
        self.idle = asyncio.Event()

    @property
    def queue_depth(self) -> int:
        """Incidents waiting for the VLM or being answered."""
        return len(self.backlog)

    @property
    def queued(self) -> int:
        """Incidents waiting for their turn."""
        return self.backlog.queued

    @property
    def counts(self) -> dict[str, int]:
        """Incidents since the start: `skipped`, `coalesced`, `displaced` (the metrics')."""
        return {
            "skipped": self.skipped,
            "coalesced": self.coalesced,
            "displaced": self.displaced,
        }

    @property
    def oldest_pending_s(self) -> float | None:
        """Seconds the oldest incident not answered yet has waited (None: none waits)."""
        return self._oldest(None)

    def station_backlog(self, station_id: str) -> tuple[int, float | None]:
        """A station's incidents waiting or being answered, and the oldest one's wait in
        seconds (that of one waiting in the store too)."""
        count = sum(1 for m in self.backlog.members() if m.station_id == station_id)
        return count, self._oldest(station_id)

    def _oldest(self, station_id: str | None) -> float | None:
        times = [
            m.created_at
            for m in self.backlog.members()
            if station_id is None or m.station_id == station_id
        ]
        times += [t for sid, t in self._in_store.values() if station_id in (None, sid)]
        if not times:
            return None
        return round(max(0.0, (self._now() - min(times)).total_seconds()), 1)

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

    def _offer(self, incident: Incident) -> bool:
        """Into the backlog; False when a full backlog refused it (it waits in the store)."""
        if incident.incident_id in self.backlog:
            return True
        station = self._stations.get(incident.station_id)
        triggered = station is not None and station.mode == "triggered"
        return self._queue(self.backlog.waiting(incident, triggered=triggered))

    def _queue(self, item: Waiting) -> bool:
        offer = self.backlog.offer(item)
        if offer.displaced is not None:
            self._left_in_store(offer.displaced)
        if not offer.queued:
            self._left_in_store(item)
            return False
        self._in_store.pop(item.incident_id, None)
        self.idle.clear()
        self._ready.set()
        self._backlog_changed(item.station_id)
        return True

    def _left_in_store(self, item: Waiting) -> None:
        if item.incident_id in self._in_store:
            return
        self._in_store[item.incident_id] = (item.station_id, item.created_at)
        self.displaced += 1
        if self.displaced in (1, 10, 100) or self.displaced % 1000 == 0:
            _LOGGER.warning(
                "VLM: the queue is full (%d); %d incident(s) so far left pending in the store "
                "for later",
                self.vlm.queue_size,
                self.displaced,
            )
        self._backlog_changed(item.station_id)

    def _backlog_changed(self, station_id: str) -> None:
        if self._on_backlog is not None:
            self._on_backlog(station_id)

    async def on_incident(self, incident: Incident) -> None:
        if incident.vlm is not None and incident.vlm.status == VlmStatus.PENDING:
            self._offer(incident)

    async def _sweeper(self) -> None:
        first = True
        while True:
            try:
                await self._sweep(first)
            except asyncio.CancelledError:
                raise
            except Exception:  # the sweep must outlive a bad round (a locked store, say)
                _LOGGER.exception("VLM: the sweep for waiting incidents failed; retrying")
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # a stop came while the sweep awaited something that swallowed it (a client
                # library): end here, or every round's timeout below would start a new round
                # and `stop()` would wait for ever (a Home Assistant reload hung on it)
                raise asyncio.CancelledError
            first = False
            if not self.backlog:
                self.idle.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.vlm.retry_interval):
                    await self._wake.wait()

    async def _sweep(self, first: bool) -> None:
        await self._expire()
        if self.breaker.state != "open":
            if self.agent.profile is None and self.breaker.allow():
                await self._check_server(first)
            if self.agent.profile is not None:
                await self._offer_pending()

    async def _offer_pending(self) -> None:
        """Offer the oldest incidents the store has waiting (pending or unavailable): those a
        full backlog let go, those Ollama could not answer, those from before a restart."""
        limit = self.vlm.queue_size
        try:
            idents = await self._store.incidents_awaiting_vlm(limit)
            for ident in idents:
                if ident in self.backlog:
                    continue
                incident = await self._store.incident(ident)
                if incident is None or incident.vlm is None:
                    continue
                if self._waited(incident) is not None:
                    await self._skip(incident)
                elif not self._offer(incident) and not self.backlog.policy:
                    break  # first in, first out: none after it gets in either
        except EdgeInspectorError as exc:
            _LOGGER.error("VLM: cannot read pending incidents: %s", exc)
            return
        if len(idents) < limit:  # all the store has waiting: forget what is no longer
            read = set(idents)
            for ident in [i for i in self._in_store if i not in read]:
                del self._in_store[ident]

    # -- max age ---------------------------------------------------------------------------

    def _waited(self, incident: Incident | Waiting) -> float | None:
        """Seconds it has waited, when that is over `max_age` (None: not too old)."""
        if self.max_age is None:
            return None
        waited = (self._now() - incident.created_at).total_seconds()
        return waited if waited > self.max_age else None

    async def _expire(self) -> None:
        """Skip the incidents that waited too long in the backlog for their turn."""
        if self.max_age is None:
            return
        cutoff = self._now() - timedelta(seconds=self.max_age)
        for item in self.backlog.expire(cutoff):
            self._backlog_changed(item.station_id)
            try:
                incident = await self._store.incident(item.incident_id)
            except EdgeInspectorError as exc:  # still pending in the store: the sweep retries
                _LOGGER.error("VLM: cannot read incident %s: %s", item.incident_id, exc)
                continue
            if incident is not None:
                await self._skip(incident)

    async def _skip(self, incident: Incident) -> None:
        """Mark it `skipped`: it waited longer than `max_age`, and is never sent."""
        waited = (self._now() - incident.created_at).total_seconds()
        error = f"waited {waited:.0f} s, over vlm.max_age {self.max_age:g} s"

        def change(current: Incident) -> Incident | None:
            if current.vlm is None or current.vlm.status not in _WAITING:
                return None
            vlm = current.vlm.model_copy(
                update={"status": VlmStatus.SKIPPED, "error": error, "updated_at": self._now()}
            )
            return current.model_copy(update={"vlm": vlm})

        self._in_store.pop(incident.incident_id, None)
        try:
            updated = await self._store.modify_incident(incident.incident_id, change)
        except EdgeInspectorError as exc:
            _LOGGER.error("VLM: cannot mark incident %s skipped: %s", incident.incident_id, exc)
            return
        if updated is not None and updated.vlm is not None and updated.vlm.error == error:
            self.skipped += 1
            await self._sink.on_incident_update(updated)

    async def _check_server(self, first: bool) -> None:
        try:
            profile = await self.agent.prepare()
        except VlmUnavailableError as exc:
            self._failed(exc)
            return
        except Exception as exc:  # a check that failed oddly is a failed check
            _LOGGER.exception("VLM: checking the server failed")
            self._failed(VlmUnavailableError(f"checking the server failed: {exc!r}"))
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
            group = self.backlog.take()
            if group is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            again: list[Waiting] = []
            try:
                again = await self._answer(group)
            except asyncio.CancelledError:
                raise
            except Exception:  # one incident must not stop the worker
                _LOGGER.exception("VLM: enriching incident %s failed", group.members[0].incident_id)
            finally:
                self.backlog.done(group)
                for station_id in {m.station_id for m in group.members}:
                    self._backlog_changed(station_id)
            for item in again:  # a leader without an answer: its repeats get their own turn
                self._queue(item)
            if not self.backlog:
                self.idle.set()

    async def _images(self, incident: Incident) -> list[bytes]:
        loop = asyncio.get_running_loop()
        out = []
        for stored in (incident.crop_path, incident.frame_path):
            found = self._store.image_file(stored)
            if found is None:
                continue
            data = await loop.run_in_executor(
                self._executor,
                _prepare_image,
                str(found),
                self.vlm.image_max_side,
                self.vlm.jpeg_quality,
            )
            if data is not None:
                out.append(data)
        return out

    async def _answer(self, group: Group) -> list[Waiting]:
        """Ask the agent about the group's leader (`Group.leader`); the other incidents of
        the group get a copy of a `done` answer. Returns the repeats to offer again when the
        answer is not `done` (each deserves its own try then)."""
        incidents = await self._still_waiting(group)
        # its leader among those read (more repeats may have joined meanwhile)
        read = [m for m in group.members if m.incident_id in incidents]
        first = group.leader(read) if read else None
        station = None if first is None else self._stations.get(first.station_id)
        if first is None or station is None:
            return []
        leader = incidents[first.incident_id]
        if not self.breaker.allow():
            await self._unavailable(group, self.last_error or "Ollama is not answering")
            return []
        try:
            early = (
                functools.partial(self._early_verdict, leader.incident_id)
                if station.vlm_hold.enabled
                else None
            )
            outcome = await self.agent.run(
                leader, station, await self._images(leader), on_classified=early
            )
        except VlmUnavailableError as exc:
            self.agent.profile = None  # check the server and model again before the next try
            self._failed(exc)
            await self._unavailable(group, str(exc))
            return []
        except Exception:
            # not the server's answer (a picture that would not decode, a store error): the
            # worker logs it and the sweep offers the incident again; a half-open breaker's
            # probe must not stay taken
            self.breaker.failure()
            raise
        self._recovered()
        updated = await self._store.modify_incident(
            leader.incident_id, lambda current: current.model_copy(update={"vlm": outcome.result})
        )
        if updated is None:
            return []
        self.enriched += 1
        await self._sink.on_incident_update(updated)
        for alert in outcome.alerts:
            await self._sink.on_alert(alert)
        if outcome.result.status != VlmStatus.DONE:
            repeats = [m for m in group.members if m.incident_id != leader.incident_id]
            self.backlog.release(group, repeats)
            return repeats
        # the repeats, also those that join while the answer is being copied
        answered = {leader.incident_id}
        while todo := [m for m in group.members if m.incident_id not in answered]:
            for item in todo:
                answered.add(item.incident_id)
                await self._copy(item.incident_id, leader.incident_id, outcome.result)
        return []

    async def _early_verdict(self, incident_id: str, early: VlmResult) -> None:
        """A held station's defect goes out as soon as the model has classified it (with its
        verdict, still `pending`), not after the report and the actions."""

        def change(current: Incident) -> Incident | None:
            if current.vlm is None or current.vlm.status not in _WAITING:
                return None
            return current.model_copy(update={"vlm": early})

        try:
            updated = await self._store.modify_incident(incident_id, change)
        except EdgeInspectorError as exc:  # the whole answer still follows
            _LOGGER.error("VLM: cannot record incident %s's verdict: %s", incident_id, exc)
            return
        if updated is not None:
            await self._sink.on_incident_update(updated)

    async def _still_waiting(self, group: Group) -> dict[str, Incident]:
        """The group's incidents as stored, by id, that still wait and are not too old (those
        are skipped); the others leave the group."""
        incidents: dict[str, Incident] = {}
        gone: list[Waiting] = []
        for item in list(group.members):
            incident = await self._store.incident(item.incident_id)
            if incident is None or incident.vlm is None or incident.vlm.status not in _WAITING:
                gone.append(item)
            elif self._waited(incident) is not None:
                gone.append(item)
                await self._skip(incident)
            else:
                incidents[item.incident_id] = incident
        self.backlog.release(group, gone)
        return incidents

    async def _copy(self, incident_id: str, leader_id: str, answer: VlmResult) -> None:
        """A repeat gets the answer about `leader_id`: its classification and report, not its
        actions (taken once, for the leader)."""

        def change(current: Incident) -> Incident | None:
            if current.vlm is None or current.vlm.status not in _WAITING:
                return None
            # what the model judged is copied; what its call did and cost is the leader's
            copied = VlmResult(
                status=VlmStatus.DONE,
                model=answer.model,
                prompt_version=answer.prompt_version,
                mode=answer.mode,
                classification=answer.classification,
                verdict=verdict_of(current.defect_class, answer.classification),
                report=answer.report,
                coalesced_with=leader_id,
                attempts=current.vlm.attempts,
                evidence=answer.evidence,
                updated_at=self._now(),
            )
            return current.model_copy(update={"vlm": copied})

        updated = await self._store.modify_incident(incident_id, change)
        if updated is not None and updated.vlm is not None and updated.vlm.coalesced_with:
            self.coalesced += 1
            await self._sink.on_incident_update(updated)

    async def _unavailable(self, group: Group, error: str) -> None:
        """Every incident of the group waits for Ollama (the sweep offers them again)."""
        for item in list(group.members):
            incident = await self._store.incident(item.incident_id)
            if incident is not None and incident.vlm is not None:
                await self._mark_unavailable(incident, error)

    async def _mark_unavailable(self, incident: Incident, error: str) -> None:
        self.unavailable += 1
        assert incident.vlm is not None
        # it waits in the store for Ollama: counted there until the sweep offers it again
        self._in_store[incident.incident_id] = (incident.station_id, incident.created_at)
        if incident.vlm.status == VlmStatus.UNAVAILABLE and incident.vlm.error == error:
            return  # nothing new to tell
        result = incident.vlm.model_copy(
            update={
                "status": VlmStatus.UNAVAILABLE,
                "error": error,
                "attempts": incident.vlm.attempts + 1,
                "updated_at": self._now(),
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
            while self.backlog:
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
