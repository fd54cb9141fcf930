"""The VLM backlog under a burst: a defect every second against a model that takes 10 s each.

    python bench/bench_backlog.py [--seconds 600] [--model-seconds 10] [--max-age 600 120]

Ten simulated minutes, in a second or two of real time: the real `IncidentEnricher` (backlog,
coalescing, max age, the sweep of the store every `retry_interval`) runs on an event loop whose
clock jumps to the next timer whenever nothing is ready, against a model that "takes"
`--model-seconds` of that clock per incident and a store kept in memory (the same calls as the
SQLite store's, with no thread, so nothing runs outside the simulated clock).

The defects (seeded, `--seed`): one a second; 20 % on a triggered press (one part a trigger, no
track), the rest on a continuous belt where faults come and go (a fault makes the same class on
part after part for 20-60 s: repeats within `vlm.coalesce_window`), a few re-found tracks, and
one-offs. About one in ten is high severity: the detector is at least `vlm.priority_confidence`
(0.8) sure of it (the detector has no severity of its own). After the last defect the run goes
on for `--drain` seconds without new ones, so the last can be answered; everything is counted at
the end.

Columns: the policy off (first in, first out, every incident asked on its own, no max age: the
enricher before issue 13), then the policy on with each `--max-age`. Other settings are the
defaults (queue_size 256, retry_interval 30 s, coalesce_window 60 s). "Wait in model calls" of an
answered incident: the model calls that ended between its arrival and its answer, the one that
answered it included (1: answered by the call that was running or the next one started for it
while the model was idle; 2: the running call ended, then its own).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import selectors
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent))

from edge_inspector.config import EngineConfig, StationConfig
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.runner import percentile
from edge_inspector.events import (
    BoundingBox,
    Classification,
    Detection,
    Incident,
    IncidentReport,
    ModelInfo,
    Severity,
    VlmResult,
    VlmStatus,
)
from edge_inspector.sinks import EventSink
from edge_inspector.vlm import AgentOutcome, IncidentEnricher
from edge_inspector.vlm.client import ModelProfile
from edge_inspector.vlm.enricher import pending_result

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
CLASSES = ("scratch", "dent", "crack", "spot")


class SimulatedLoop(asyncio.SelectorEventLoop):
    """An event loop on a simulated clock: when nothing is ready, the clock jumps to the next
    timer instead of waiting for it. Sleeps and timeouts cost no real time; anything run on a
    thread would not be waited for, so the simulation keeps everything on the loop."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        selector: selectors.BaseSelector = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            events = real_select(0)
            if events or timeout == 0:
                return events
            if timeout is None:
                raise RuntimeError("the simulation is stuck: nothing ready, no timer")
            self._now += timeout
            return events

        selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._now


class MemoryStore:
    """The store calls the enricher makes, on a dict."""

    def __init__(self) -> None:
        self.incidents: dict[str, Incident] = {}

    async def add_incident(self, incident: Incident) -> None:
        self.incidents[incident.incident_id] = incident

    async def incident(self, incident_id: str) -> Incident | None:
        return self.incidents.get(incident_id)

    async def modify_incident(
        self, incident_id: str, change: Callable[[Incident], Incident | None]
    ) -> Incident | None:
        current = self.incidents.get(incident_id)
        if current is None:
            return None
        updated = change(current)
        if updated is None:
            return current
        self.incidents[incident_id] = updated
        return updated

    async def incidents_awaiting_vlm(self, limit: int = 100) -> list[str]:
        waiting = [
            i
            for i in self.incidents.values()
            if i.vlm is not None and i.vlm.status in (VlmStatus.PENDING, VlmStatus.UNAVAILABLE)
        ]
        return [i.incident_id for i in sorted(waiting, key=lambda i: i.created_at)[:limit]]

    def image_file(self, stored: str | None) -> Path | None:
        return None  # no pictures: the simulated model does not look


class SimulatedModel:
    """Stands in for the VLM agent: every call takes `seconds` of the simulated clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.profile = ModelProfile("simulated", ("completion", "vision", "tools"))
        self.vlm = SimpleNamespace(host="simulated", model="simulated", close=self._close)
        self.guard = None
        self.calls = 0
        self.finished = 0

    @staticmethod
    async def _close() -> None:
        return None

    async def prepare(self) -> ModelProfile:
        return self.profile

    async def run(
        self,
        incident: Incident,
        station: StationConfig,
        images: list[bytes],
        *,
        on_classified: Any = None,
    ) -> AgentOutcome:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        self.finished += 1
        now = T0 + timedelta(seconds=asyncio.get_running_loop().time())
        return AgentOutcome(
            VlmResult(
                status=VlmStatus.DONE,
                model="simulated",
                prompt_version="bench",
                classification=Classification(
                    defect_type=incident.defect_class,
                    severity=Severity.MEDIUM,
                    confidence=0.9,
                    description="simulated",
                ),
                report=IncidentReport(summary="simulated", probable_cause="-", fix_steps=("-",)),
                attempts=1,
                updated_at=now,
            )
        )


@dataclass
class Arrival:
    second: int
    station: str
    defect_class: str
    track: int | None
    confidence: float


def workload(seconds: int, seed: int, sure: float) -> list[Arrival]:
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    track = 0
    fault: tuple[str, int] | None = None  # the belt's fault: its class, until when
    last_belt: Arrival | None = None
    for second in range(seconds):
        high = rng.random() < 0.1
        confidence = rng.uniform(sure, 0.98) if high else rng.uniform(0.4, sure - 0.01)
        if rng.random() < 0.2:
            arrivals.append(Arrival(second, "press", rng.choice(CLASSES), None, confidence))
            continue
        if fault is not None and fault[1] <= second:
            fault = None
        if fault is None and rng.random() < 0.08:
            fault = (rng.choice(CLASSES), second + rng.randint(20, 60))
        draw = rng.random()
        if last_belt is not None and draw < 0.05:  # a track lost and found again
            cls, tid = last_belt.defect_class, last_belt.track
        elif fault is not None and draw < 0.75:  # the fault, on the next part
            track += 1
            cls, tid = fault[0], track
        else:
            track += 1
            cls, tid = rng.choice(CLASSES), track
        last_belt = Arrival(second, "belt", cls, tid, confidence)
        arrivals.append(last_belt)
    return arrivals


def _config(policy: bool, max_age: float | None) -> EngineConfig:
    station = {
        "source": {"type": "push"},
        "model": {"path": str(DEMO_MODEL)},
        "defects": dict.fromkeys(CLASSES, 0.3),
    }
    return EngineConfig.model_validate(
        {
            "stations": [
                {"id": "belt", "name": "Belt", **station},
                {"id": "press", "name": "Press", "mode": "triggered", **station},
            ],
            "vlm": {"host": "http://simulated", "backlog_policy": policy, "max_age": max_age},
        }
    )


@dataclass
class Tally(EventSink):
    """When each incident was answered, in model calls ended and in simulated seconds."""

    model: SimulatedModel
    answered: dict[str, tuple[int, float]] = field(default_factory=dict)

    async def on_incident_update(self, incident: Incident) -> None:
        if incident.vlm is not None and incident.vlm.status == VlmStatus.DONE:
            now = asyncio.get_running_loop().time()
            self.answered.setdefault(incident.incident_id, (self.model.finished, now))


async def simulate(
    arrivals: list[Arrival], *, policy: bool, max_age: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    config = _config(policy, max_age)
    store = MemoryStore()
    model = SimulatedModel(args.model_seconds)
    tally = Tally(model)
    enricher = IncidentEnricher(
        config,
        store,  # type: ignore[arg-type]
        tally,
        model,  # type: ignore[arg-type]
        clock=loop.time,
        now=lambda: T0 + timedelta(seconds=loop.time()),
    )
    await enricher.start()
    box = BoundingBox(x1=10, y1=10, x2=60, y2=60)
    arrived: dict[str, tuple[Arrival, int, float]] = {}  # by id: calls ended then, and when
    depths: list[int] = []
    oldest: list[float] = []
    for n, a in enumerate(arrivals):
        await asyncio.sleep(max(0.0, a.second - loop.time()))
        incident = Incident(
            incident_id=f"{n:04d}",
            station_id=a.station,
            station_name=a.station.title(),
            created_at=T0 + timedelta(seconds=loop.time()),
            inspection_id=f"{n:04d}",
            defect_class=a.defect_class,
            confidence=a.confidence,
            boxes=(box,),
            detections=(
                Detection(
                    class_name=a.defect_class,
                    class_id=CLASSES.index(a.defect_class),
                    confidence=a.confidence,
                    box=box,
                    track_id=a.track,
                    defect=True,
                ),
            ),
            track_id=a.track,
            model=ModelInfo(name="demo.pt", sha256="0" * 64),
            latency_ms=20,
            vlm=pending_result("simulated"),
        )
        await store.add_incident(incident)  # stored before anyone is told, as a station does
        await enricher.on_incident(incident)
        arrived[incident.incident_id] = (a, model.finished, loop.time())
        depths.append(enricher.queue_depth)
        oldest.append(enricher.oldest_pending_s or 0.0)
    await asyncio.sleep(max(0.0, args.seconds + args.drain - loop.time()))
    await enricher.stop()

    outcome: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    for incident in store.incidents.values():
        vlm = incident.vlm
        assert vlm is not None
        if vlm.status == VlmStatus.DONE:
            outcome["coalesced" if vlm.coalesced_with else "done"] += 1
        elif vlm.status == VlmStatus.SKIPPED:
            outcome["skipped"] += 1
            assert vlm.error, "a skipped incident says why"
            reasons[re.sub(r"\d+", "N", vlm.error)] += 1
        else:
            outcome[str(vlm.status)] += 1
    high = [i for i, (a, _, _) in arrived.items() if a.confidence >= args.sure]
    calls_waited = [tally.answered[i][0] - arrived[i][1] for i in high if i in tally.answered]
    seconds_waited = [tally.answered[i][1] - arrived[i][2] for i in high if i in tally.answered]
    newest = high[-1]
    return {
        "depth_max": max(depths),
        "depth_mean": statistics.fmean(depths),
        "oldest_max_s": max(oldest),
        "calls": model.calls,
        "incidents": len(store.incidents),
        "done": outcome["done"],
        "coalesced": outcome["coalesced"],
        "skipped": outcome["skipped"],
        "skip_reasons": dict(reasons),
        "pending": outcome["pending"] + outcome["unavailable"],
        "displaced": enricher.displaced,
        "high": len(high),
        "high_answered": len(calls_waited),
        "high_calls_p50": percentile([float(c) for c in calls_waited], 50),
        "high_calls_max": max(calls_waited, default=None),
        "high_seconds_p50": percentile(seconds_waited, 50),
        "high_seconds_max": max(seconds_waited, default=None),
        "newest_high_at_s": arrived[newest][2],
        "newest_high_calls": tally.answered[newest][0] - arrived[newest][1]
        if newest in tally.answered
        else None,
        "newest_high_status": str(store.incidents[newest].vlm.status),  # type: ignore[union-attr]
    }


def run(arrivals: list[Arrival], policy: bool, max_age: float | None, args: Any) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=SimulatedLoop) as runner:
        return runner.run(simulate(arrivals, policy=policy, max_age=max_age, args=args))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=600, help="seconds with a defect each")
    parser.add_argument("--model-seconds", type=float, default=10.0, help="per incident")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds after the last")
    parser.add_argument("--max-age", type=float, nargs="+", default=[600.0, 120.0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.sure = EngineConfig.model_validate({"stations": []}, context={"allow_no_stations": True})
    args.sure = args.sure.vlm.priority_confidence
    arrivals = workload(args.seconds, args.seed, args.sure)

    started = time.perf_counter()
    runs = {"policy off": run(arrivals, False, None, args)}
    for age in args.max_age:
        runs[f"on, max_age {age:g} s"] = run(arrivals, True, age, args)
    real = time.perf_counter() - started

    kinds = collections.Counter(
        "press (triggered)" if a.station == "press" else "belt" for a in arrivals
    )
    print(
        f"Edge Inspector VLM backlog benchmark: {len(arrivals)} defects, one a second for "
        f"{args.seconds} s (+{args.drain:g} s without), model {args.model_seconds:g} s an "
        f"incident, seed {args.seed}"
    )
    print(
        "  defects: "
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        + f"; {sum(a.confidence >= args.sure for a in arrivals)} high severity "
        f"(confidence >= {args.sure:g})"
    )
    rows = (
        ("queue depth, max (waiting + answered)", "depth_max"),
        ("queue depth, mean", "depth_mean"),
        ("oldest pending, max (s)", "oldest_max_s"),
        ("model calls", "calls"),
        ("incidents", "incidents"),
        ("  done (own model call)", "done"),
        ("  done, coalesced (a repeat's call)", "coalesced"),
        ("  skipped (with a reason)", "skipped"),
        ("  still pending (counted)", "pending"),
        ("left in the store by a full queue", "displaced"),
        ("high severity: answered / all", None),
        ("  wait in model calls, p50", "high_calls_p50"),
        ("  wait in model calls, max", "high_calls_max"),
        ("  wait in seconds, p50", "high_seconds_p50"),
        ("  wait in seconds, max", "high_seconds_max"),
        ("newest high severity: wait in calls", "newest_high_calls"),
        ("  its status at the end", "newest_high_status"),
    )
    width = max(len(name) for name, _ in rows) + 2
    print()
    print(" " * width + "".join(f"{name:>22}" for name in runs))
    for name, key in rows:
        if key is None:
            cells = [f"{r['high_answered']} / {r['high']}" for r in runs.values()]
        else:
            cells = [_cell(r[key]) for r in runs.values()]
        print(f"{name:<{width}}" + "".join(f"{c:>22}" for c in cells))
    for column, r in runs.items():
        for reason, n in r["skip_reasons"].items():
            print(f"skipped, {column}: {n} x '{reason}'")
        total = r["done"] + r["coalesced"] + r["skipped"] + r["pending"]
        assert total == r["incidents"], f"{column}: every incident is accounted for"
    newest = runs["policy off"]["newest_high_at_s"]
    print(f"\n(the newest high-severity defect arrived at {newest:.0f} s; simulated")
    print(f" {len(runs)} x {args.seconds + args.drain:g} s in {real:.2f} s of real time)")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
