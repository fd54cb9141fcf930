"""The VLM's backlog (issue 13): a slow model answers what matters now first, repeats of a
defect share one answer, an incident that waited too long is skipped with the reason, a full
queue loses nothing; with the policy off it is first in, first out.

The enricher runs against a real store and a scripted agent whose calls the test lets answer
one at a time (so the model is "busy" while incidents arrive), with a clock the test moves
where ages matter. The last test runs the whole engine against the local Ollama-speaking
server, for what the station's state and the VLM status show.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_inspector.config import EngineConfig, StationConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.events import (
    ActionRecord,
    ActionStatus,
    BoundingBox,
    Classification,
    Detection,
    Incident,
    IncidentReport,
    ModelInfo,
    OperatorAlert,
    Severity,
    StationState,
    VlmResult,
    VlmStatus,
)
from edge_inspector.sinks import EventSink
from edge_inspector.store import Store
from edge_inspector.vlm import AgentOutcome, IncidentEnricher
from edge_inspector.vlm.client import ModelProfile
from edge_inspector.vlm.enricher import pending_result
from tests.conftest import jpeg
from tests.ollama_server import FakeOllama, Reply, agent_script
from tests.waiting import until

STATIONS = (
    """
    - id: belt
      name: Belt
      source: {type: push}
      model: {path: MODEL, imgsz: 320}
      defects: {scratch: 0.3, dent: 0.3, crack: 0.3, spot: 0.3}
    """,
    """
    - id: press
      name: Press
      mode: triggered
      source: {type: push}
      model: {path: MODEL, imgsz: 320}
      defects: {scratch: 0.3, dent: 0.3, crack: 0.3, spot: 0.3}
    """,
)
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class Clock:
    """The enricher's `now`, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class HeldAgent:
    """Stands in for `VlmAgent`: records which incident each call is about, and answers only
    when the test lets it (`answer`), with a classification, a report, an action and an alert."""

    def __init__(self) -> None:
        self.profile = ModelProfile("stub", ("completion", "vision", "tools"))
        self.vlm = SimpleNamespace(host="http://stub", model="stub", close=self._close)
        self.guard = None
        self.calls: list[str] = []
        self._answers = asyncio.Semaphore(0)

    @staticmethod
    async def _close() -> None:
        return None

    async def prepare(self) -> ModelProfile:
        return self.profile

    def answer(self, calls: int = 1) -> None:
        for _ in range(calls):
            self._answers.release()

    async def run(
        self,
        incident: Incident,
        station: StationConfig,
        images: list[bytes],
        *,
        on_classified: Any = None,
    ) -> AgentOutcome:
        self.calls.append(incident.incident_id)
        await self._answers.acquire()
        now = datetime.now(UTC)
        result = VlmResult(
            status=VlmStatus.DONE,
            model="stub",
            prompt_version="test",
            mode="tools",
            classification=Classification(
                defect_type=incident.defect_class,
                severity=Severity.HIGH,
                confidence=0.9,
                description=f"the {incident.defect_class} of {incident.incident_id}",
            ),
            report=IncidentReport(
                summary=f"report on {incident.incident_id}",
                probable_cause="a worn roller",
                fix_steps=("Replace the roller",),
            ),
            actions=(
                ActionRecord(
                    tool="divert_part",
                    arguments={"bin": "reject"},
                    status=ActionStatus.EXECUTED,
                    at=now,
                ),
            ),
            attempts=1,
            rounds=2,
            updated_at=now,
        )
        alert = OperatorAlert(
            alert_id=f"alert-{incident.incident_id}",
            kind="alert",
            station_id=incident.station_id,
            incident_id=incident.incident_id,
            message="a defect",
            severity=Severity.HIGH,
            at=now,
        )
        return AgentOutcome(result, [alert])


class Recorder(EventSink):
    def __init__(self) -> None:
        self.updates: list[Incident] = []
        self.alerts: list[OperatorAlert] = []
        self.states: list[StationState] = []

    async def on_incident_update(self, incident: Incident) -> None:
        self.updates.append(incident)

    async def on_alert(self, alert: OperatorAlert) -> None:
        self.alerts.append(alert)

    async def on_station_state(self, state: StationState) -> None:
        self.states.append(state)

    def last(self, incident: Incident) -> VlmResult | None:
        """The last VLM result told for `incident`."""
        told = [u.vlm for u in self.updates if u.incident_id == incident.incident_id]
        return told[-1] if told else None

    def settled(self, *incidents: Incident) -> bool:
        """Each of `incidents` has been told done or skipped."""
        final = (VlmStatus.DONE, VlmStatus.SKIPPED)
        return all((v := self.last(i)) is not None and v.status in final for i in incidents)


@dataclass
class Backlog:
    """An enricher with its store, sink, agent and clock: `defect()` is a new incident."""

    enricher: IncidentEnricher
    store: Store
    sink: Recorder
    agent: HeldAgent
    clock: Clock
    changed: list[str] = field(default_factory=list)  # stations told their backlog changed
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def defect(
        self,
        station: str = "belt",
        defect_class: str = "scratch",
        *,
        confidence: float = 0.5,
        track: int | None = None,
        created_at: datetime | None = None,
        offer: bool = True,
    ) -> Incident:
        """A stored incident, told to the enricher as a station would (unless `offer` is
        False: then only the store's sweep finds it)."""
        box = BoundingBox(x1=10, y1=10, x2=60, y2=60)
        incident = Incident(
            incident_id=f"{station}-{defect_class}-{next(self._ids)}",
            station_id=station,
            station_name=station.title(),
            created_at=created_at or self.clock.now,
            inspection_id="inspection",
            defect_class=defect_class,
            confidence=confidence,
            boxes=(box,),
            detections=(
                Detection(
                    class_name=defect_class,
                    class_id=0,
                    confidence=confidence,
                    box=box,
                    track_id=track,
                    defect=True,
                ),
            ),
            track_id=track,
            model=ModelInfo(name="demo.pt", sha256="0" * 64),
            latency_ms=20,
            vlm=pending_result("stub"),
        )
        await self.store.add_incident(incident)
        if offer:
            await self.enricher.on_incident(incident)
        return incident

    async def stored(self, incident: Incident) -> VlmResult:
        found = await self.store.incident(incident.incident_id)
        assert found is not None and found.vlm is not None
        return found.vlm


@pytest.fixture
async def backlog(
    make_config: Callable[..., EngineConfig], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Backlog] = []

    async def _start(vlm: str = "", *, before: Callable[[Backlog], Any] | None = None) -> Backlog:
        config = make_config(
            *STATIONS,
            extra="vlm:\n  host: http://127.0.0.1:9\n  retry_interval: 0.2\n"
            + "".join(f"  {line.strip()}\n" for line in vlm.strip().splitlines()),
        )
        store = Store(tmp_path / f"store{len(started)}")
        await store.open()
        sink, agent, clock = Recorder(), HeldAgent(), Clock()
        changed: list[str] = []
        enricher = IncidentEnricher(
            config,
            store,
            sink,
            agent,  # type: ignore[arg-type]
            now=clock,
            on_backlog=changed.append,
        )
        harness = Backlog(enricher, store, sink, agent, clock, changed)
        started.append(harness)
        if before is not None:
            await before(harness)
        await enricher.start()
        return harness

    yield _start
    for harness in started:
        await harness.enricher.stop()
        await harness.store.close()


async def test_a_stop_that_a_sweep_swallowed_still_ends_the_sweeper(
    backlog: Callable[..., Any],
) -> None:
    """Something the sweep awaits may swallow the stop's cancellation (a client library):
    the sweeper must still end, not go round again and keep `stop()` waiting for ever."""
    h = await backlog()
    entered = asyncio.Event()

    async def sweep(first: bool) -> None:
        if entered.is_set():  # a later round: cancellable (so the fixture can stop it)
            await asyncio.sleep(3600)
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # the cancellation is lost here
            await asyncio.sleep(3600)

    h.enricher._sweep = sweep  # the next round (retry_interval 0.2 s)
    async with asyncio.timeout(10):
        await entered.wait()
    async with asyncio.timeout(10):
        await h.enricher.stop()
    assert h.enricher._tasks == []


def asked(h: Backlog, *incidents: Incident) -> bool:
    return h.agent.calls == [i.incident_id for i in incidents]


# -- priorities --------------------------------------------------------------------------------


async def test_high_severity_then_triggered_defects_go_first_then_the_newest(
    backlog: Callable[..., Any],
) -> None:
    h = await backlog()
    busy = await h.defect("belt", "spot")
    await until(lambda: asked(h, busy), "the model busy with the first incident")
    arrivals = []
    for station, cls, confidence in (
        ("belt", "scratch", 0.5),  # neither
        ("belt", "dent", 0.5),  # neither, newer
        ("belt", "crack", 0.9),  # sure
        ("press", "spot", 0.5),  # triggered, newer
        ("press", "scratch", 0.9),  # triggered and sure
    ):
        h.clock.advance(1)
        arrivals.append(await h.defect(station, cls, confidence=confidence))
    old, new, sure, triggered, both = arrivals
    await until(lambda: h.enricher.queued == 5, "five incidents queued")
    h.agent.answer(6)
    await until(lambda: len(h.agent.calls) == 6, "every incident asked")
    assert asked(h, busy, both, sure, triggered, new, old), h.agent.calls
    await until(lambda: h.sink.settled(busy, *arrivals), "every incident answered")


async def test_a_tracks_first_incident_goes_before_a_repeat(backlog: Callable[..., Any]) -> None:
    h = await backlog("coalesce_window: 0")  # repeats of the track only, not of the class
    first = await h.defect("belt", "scratch", track=7)
    h.agent.answer()
    await until(lambda: h.sink.settled(first), "the track's first incident answered")
    busy = await h.defect("belt", "dent")
    await until(lambda: asked(h, first, busy), "the model busy")
    h.clock.advance(1)
    new_track = await h.defect("belt", "crack", track=8)
    h.clock.advance(1)
    repeat = await h.defect("belt", "scratch", track=7)  # newer, but a repeat
    await until(lambda: h.enricher.queued == 2, "both queued")
    h.agent.answer(3)
    await until(lambda: h.sink.settled(new_track, repeat), "both answered")
    assert asked(h, first, busy, new_track, repeat), h.agent.calls


# -- coalescing --------------------------------------------------------------------------------


async def test_repeats_arriving_while_their_defect_is_answered_share_the_answer(
    backlog: Callable[..., Any],
) -> None:
    h = await backlog()
    leader = await h.defect("belt", "scratch", track=1)
    await until(lambda: asked(h, leader), "the model asked about the first scratch")
    h.clock.advance(1)
    same_track = await h.defect("belt", "scratch", track=1)
    h.clock.advance(1)
    same_class = await h.defect("belt", "scratch", track=2)  # within the 60 s window
    other = await h.defect("belt", "dent")
    assert h.enricher.queue_depth == 4 and h.enricher.queued == 1  # the dent waits its turn
    h.agent.answer(2)
    await until(lambda: h.sink.settled(leader, same_track, same_class, other), "all answered")
    assert asked(h, leader, other), "the repeats cost no model call"
    answer = await h.stored(leader)
    for repeat in (same_track, same_class):
        copied = await h.stored(repeat)
        assert copied.status == VlmStatus.DONE
        assert copied.coalesced_with == leader.incident_id
        assert copied.classification == answer.classification
        assert copied.report == answer.report
        assert copied.actions == (), "the leader's actions are not repeated"
        assert h.sink.last(repeat) == copied
    assert answer.coalesced_with is None and len(answer.actions) == 1
    assert sorted(a.incident_id for a in h.sink.alerts) == sorted(
        [leader.incident_id, other.incident_id]
    ), "no alert for a repeat"
    assert h.enricher.coalesced == 2


async def test_repeats_waiting_together_cost_one_call_about_the_newest(
    backlog: Callable[..., Any],
) -> None:
    h = await backlog()
    busy = await h.defect("belt", "dent")
    await until(lambda: asked(h, busy), "the model busy")
    repeats = []
    for _ in range(3):
        h.clock.advance(5)
        repeats.append(await h.defect("belt", "scratch"))
    assert h.enricher.queued == 3
    h.agent.answer(2)
    await until(lambda: h.sink.settled(*repeats), "the scratches answered")
    newest = repeats[-1]
    assert asked(h, busy, newest), h.agent.calls
    for repeat in repeats[:-1]:
        assert (await h.stored(repeat)).coalesced_with == newest.incident_id


# -- max age -----------------------------------------------------------------------------------


async def test_an_incident_too_old_when_its_turn_comes_is_skipped_with_the_reason(
    backlog: Callable[..., Any],
) -> None:
    h = await backlog("max_age: 60\nretry_interval: 3600")  # no sweep: its turn decides
    busy = await h.defect("belt", "dent")
    await until(lambda: asked(h, busy), "the model busy")
    waiting = await h.defect("belt", "scratch")
    h.clock.advance(100)
    h.agent.answer()
    await until(lambda: h.sink.settled(busy, waiting), "both settled")
    skipped = await h.stored(waiting)
    assert skipped.status == VlmStatus.SKIPPED
    assert skipped.error == "waited 100 s, over vlm.max_age 60 s"
    assert h.sink.last(waiting) == skipped
    assert asked(h, busy), "the old incident was never sent"
    assert h.enricher.skipped == 1


async def test_the_sweep_skips_incidents_found_too_old_in_the_store(
    backlog: Callable[..., Any],
) -> None:
    async def from_before_a_restart(h: Backlog) -> None:
        nonlocal old
        old = await h.defect(created_at=T0 - timedelta(hours=2), offer=False)

    old: Incident | None = None
    h = await backlog("max_age: 600", before=from_before_a_restart)
    assert old is not None
    await until(lambda: h.sink.settled(old), "the old incident settled by the sweep")
    skipped = await h.stored(old)
    assert (skipped.status, skipped.error) == (
        VlmStatus.SKIPPED,
        "waited 7200 s, over vlm.max_age 600 s",
    )
    assert h.agent.calls == []


# -- a full queue ------------------------------------------------------------------------------


async def test_a_full_queue_lets_its_lowest_wait_in_the_store_and_answers_it_later(
    backlog: Callable[..., Any],
) -> None:
    h = await backlog("queue_size: 2")
    busy = await h.defect("belt", "dent")
    await until(lambda: asked(h, busy), "the model busy")
    h.clock.advance(1)
    lowest = await h.defect("belt", "scratch")  # the oldest of the lowest level
    h.clock.advance(1)
    low = await h.defect("belt", "crack")
    h.clock.advance(1)
    sure = await h.defect("belt", "spot", confidence=0.95)
    assert h.enricher.displaced == 1
    assert lowest.incident_id not in h.enricher.backlog
    assert (await h.stored(lowest)).status == VlmStatus.PENDING, "left in the store, not lost"
    assert h.enricher.queued == 2
    # its wait is counted: the belt has three in the backlog and the one in the store
    assert h.enricher.station_backlog("belt") == (3, 3.0)
    h.agent.answer(4)
    await until(lambda: h.sink.settled(busy, lowest, low, sure), "all answered")
    assert asked(h, busy, sure, low, lowest), h.agent.calls
    assert (await h.stored(lowest)).coalesced_with is None, "answered by its own call"
    assert h.enricher.displaced == 1, "counted once, however often the sweep offers it"
    assert h.enricher.oldest_pending_s is None


# -- the policy off ----------------------------------------------------------------------------


async def test_with_the_policy_off_it_is_first_in_first_out(backlog: Callable[..., Any]) -> None:
    h = await backlog("backlog_policy: false\nmax_age: 60")
    busy = await h.defect("belt", "dent")
    await until(lambda: asked(h, busy), "the model busy")
    arrivals = [
        await h.defect("belt", "scratch"),
        await h.defect("belt", "crack", confidence=0.95),
        await h.defect("press", "spot"),
        await h.defect("belt", "scratch"),  # a repeat of the first
    ]
    h.clock.advance(1000)  # no max age either
    h.agent.answer(5)
    await until(lambda: h.sink.settled(busy, *arrivals), "all answered")
    assert asked(h, busy, *arrivals)
    for incident in arrivals:
        assert (await h.stored(incident)).coalesced_with is None
    assert (h.enricher.skipped, h.enricher.coalesced) == (0, 0)


# -- what is shown ------------------------------------------------------------------------------


async def test_each_stations_backlog_and_oldest_wait_are_counted(
    backlog: Callable[..., Any],
) -> None:
    h = await backlog()
    busy = await h.defect("belt", "dent")
    await until(lambda: asked(h, busy), "the model busy")
    h.clock.advance(30)
    await h.defect("belt", "scratch")
    await h.defect("press", "spot")
    h.clock.advance(12)
    assert h.enricher.station_backlog("belt") == (2, 42.0)
    assert h.enricher.station_backlog("press") == (1, 12.0)
    assert h.enricher.oldest_pending_s == 42.0
    assert {"belt", "press"} <= set(h.changed)
    h.changed.clear()
    h.agent.answer(3)
    await until(lambda: h.enricher.queue_depth == 0, "all answered")
    assert h.enricher.station_backlog("belt") == (0, None)
    assert h.enricher.oldest_pending_s is None
    assert {"belt", "press"} <= set(h.changed), "each station told when its incidents left"


async def test_the_station_state_and_the_vlm_status_show_the_backlog(
    make_config: Callable[..., EngineConfig],
    ollama: FakeOllama,
    defect_scenes: list[ConveyorFrame],
) -> None:
    """Through the whole engine: the station's published state counts its incident while the
    model answers and zero after, without another inspection; the VLM status has the figures."""
    model = agent_script()
    asked: list[dict[str, Any]] = []

    def slowly(body: dict[str, Any]) -> Reply:
        reply = model(body)
        if body.get("messages"):  # not the warm-up's empty chat
            asked.append(body)
            if len(asked) == 1:
                reply.delay = 2.0  # the first question about the incident: it waits meanwhile
        return reply

    ollama.script = slowly
    config = make_config(
        STATIONS[1],
        extra=f"vlm:\n  host: {ollama.url}\n  request_timeout: 5\n  retry_interval: 0.3\n",
    )
    sink = Recorder()
    async with Engine(config, sinks=[sink]) as engine:
        scene = next(s for s in defect_scenes if len(s.truths) == 1)
        result = await engine.stations["press"].inspect_image(jpeg(scene.image))
        assert result.new_incident_ids
        await until(lambda: any(s.vlm_queue == 1 for s in sink.states), "a state with one waiting")
        status = await engine.vlm_status()
        assert status is not None and status.queue_depth == 1
        assert status.oldest_pending_s is not None and status.oldest_pending_s >= 0
        await until(
            lambda: sink.states[-1].vlm_queue == 0, "a state with none waiting, once answered"
        )
        assert sink.states[-1].vlm_oldest_pending_s is None
        status = await engine.vlm_status()
        assert status is not None
        assert (status.queue_depth, status.oldest_pending_s, status.skipped) == (0, None, 0)
