"""Capacity: how many 5-fps stations one machine runs, and what a station costs.

    python bench/bench_capacity.py [--fps 5] [--seconds 20] [--start 8] [--step 4]
                                   [--runtime pytorch] [--json FILE]

1. Stations at `--fps` each, all on the bundled model, their cameras ticking on a fixed
   schedule (a live camera: a frame the station has not taken by the next tick is replaced, a
   dropped frame). A count passes when no frame was dropped and the p99 frame-to-event latency
   (capture to the event at the sinks, the inspection stored) is under 100 ms. The count grows
   by `--step` until one fails, then the bisection between them. The bare model's throughput,
   measured in the same run, gives the ceiling: `bare frames/s / fps` stations.
2. The CPU and the memory per station: triggered stations waiting for a trigger (idle), and
   stations running at `--fps`, against the same engine with no station running.

Every figure comes from this run; the machine is whatever it is (noisy): compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_memory import rss_mb  # bench/ is on the path when run as a script

from edge_inspector.config import EngineConfig
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.runner import percentile
from edge_inspector.demo.synthetic import ConveyorCamera
from edge_inspector.detect.batcher import inference_thread
from edge_inspector.detect.runtime import prepare_ultralytics, use_threads_for
from edge_inspector.engine import Engine
from edge_inspector.errors import SourceExhaustedError
from edge_inspector.events import InspectionResult
from edge_inspector.frames import Frame, Image
from edge_inspector.sinks import EventSink
from edge_inspector.sources import FrameSource

LIMIT_MS = 100.0  # the p99 frame-to-event a station must keep
DEFECTS = {"scratch": 0.45, "dent": 0.45, "crack": 0.45, "spot": 0.45}


class TickingCamera(FrameSource):
    """A live camera on a fixed schedule: frame k is captured at `start + k / fps`. Reading
    after the next tick has passed means the frames in between were replaced unseen."""

    live = False  # finite (the run ends): `Engine.wait_finished` waits for it

    def __init__(self, images: list[Image], fps: float, go: asyncio.Event) -> None:
        self._images = images
        self._period = 1.0 / fps
        self._go = go  # set once every camera has its schedule: start-up is not timed
        self._start = self._end = 0.0
        self._next = 0  # the index of the next tick to hand out
        self.captured: dict[int, float] = {}
        self.dropped = 0

    def schedule(self, start: float, end: float) -> None:
        self._start, self._end = start, end

    async def read(self, *, not_before: float | None = None) -> Frame:
        await self._go.wait()
        now = time.monotonic()
        newest = int((now - self._start) / self._period)  # the last tick that has happened
        if newest > self._next:
            self.dropped += newest - self._next  # replaced before the station came for them
            self._next = newest
        tick = self._start + self._next * self._period
        if tick >= self._end:
            raise SourceExhaustedError("the run is over")
        if tick > now:
            await asyncio.sleep(tick - now)
        seq = self._next
        self._next += 1
        self.captured[seq] = tick
        return Frame(self._images[seq % len(self._images)], seq, "tick", captured_at=tick)


class EventClock(EventSink):
    def __init__(self, cameras: dict[str, TickingCamera]) -> None:
        self._cameras = cameras
        self.event_ms: list[float] = []

    async def on_inspection(self, result: InspectionResult) -> None:
        captured = self._cameras[result.station_id].captured[result.frame_seq]
        self.event_ms.append((time.monotonic() - captured) * 1000)


@dataclass
class Trial:
    stations: int
    frames: int
    dropped: int
    p50: float
    p99: float
    batch_mean: float
    cpu_percent: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.dropped == 0 and self.p99 < LIMIT_MS

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (
            f"  {self.stations:3d} stations: {self.frames:6d} frames, {self.dropped:4d} dropped, "
            f"frame-to-event p50 {self.p50:6.1f} ms p99 {self.p99:6.1f} ms, "
            f"mean batch {self.batch_mean:4.2f}, CPU {self.cpu_percent:5.1f}%   {verdict}"
        )


class Cameras:
    """The ticking cameras of one run, one per station, made by the engine's source factory;
    they start together once the engine is up (start-up is not timed)."""

    def __init__(self, images: list[Image], fps: float) -> None:
        self._images = images
        self._fps = fps
        self._go = asyncio.Event()
        self.by_station: dict[str, TickingCamera] = {}

    def __call__(self, station: Any) -> TickingCamera:
        camera = TickingCamera(self._images, self._fps, self._go)
        self.by_station[station.id] = camera
        return camera

    def start(self, seconds: float) -> None:
        """A second of warm-up, then `seconds`; the cameras are not in step with each other
        (their ticks spread over the period), as real ones are not."""
        began = time.monotonic() + 0.2
        count = len(self.by_station)
        for index, camera in enumerate(self.by_station.values()):
            camera.schedule(began + index / (self._fps * count), began + 1.0 + seconds)
        self._go.set()


def _config(count: int, args: argparse.Namespace, store: Path, *, triggered: bool) -> EngineConfig:
    station = {
        "source": {"type": "push"},
        "model": {"path": str(args.model), "imgsz": args.imgsz, "runtime": args.runtime},
        "defects": DEFECTS,
        "fps": None,
        "mode": "triggered" if triggered else "continuous",
    }
    return EngineConfig.model_validate(
        {
            "stations": [
                {"id": f"cam{i:02d}", "name": f"Camera {i}", **station} for i in range(count)
            ],
            "store": {"path": str(store)},
            "detection": {"max_batch": args.max_batch},
        }
    )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def trial(count: int, args: argparse.Namespace, images: list[Image], store: Path) -> Trial:
    cameras = Cameras(images, args.fps)
    config = _config(count, args, store, triggered=False)
    clock = EventClock(cameras.by_station)
    engine = Engine(config, sinks=[clock], source_factory=cameras, inference_executor=args.executor)
    # The cameras start ticking once the model is loaded; the first second is a warm-up.
    async with engine:
        cameras.start(args.seconds)
        cpu0, wall0 = _cpu(), time.monotonic()
        await engine.wait_finished()
        cpu = (_cpu() - cpu0) / (time.monotonic() - wall0) * 100
        queue = next(iter(engine._inference.values()))
        batch_mean = queue.frames / max(1, queue.batches)
    warm = int(args.fps)  # the first second's frames are the warm-up
    latencies = clock.event_ms
    measured = latencies[warm * count :] if len(latencies) > warm * count else latencies
    return Trial(
        stations=count,
        frames=len(latencies),
        dropped=sum(c.dropped for c in cameras.by_station.values()),
        p50=percentile(measured, 50),
        p99=percentile(measured, 99),
        batch_mean=batch_mean,
        cpu_percent=cpu,
    )


def bare_fps(args: argparse.Namespace, images: list[Image]) -> float:
    from ultralytics import YOLO

    def run() -> float:
        model = YOLO(str(args.model), task="detect")
        for image in images[:5]:
            model.predict(image, imgsz=args.imgsz, verbose=False)
        started = time.perf_counter()
        for image in images:
            model.predict(image, imgsz=args.imgsz, verbose=False)
        return len(images) / (time.perf_counter() - started)

    return float(args.executor.submit(run).result())


async def per_station(
    args: argparse.Namespace, images: list[Image], tmp: Path
) -> dict[str, dict[str, float]]:
    """CPU (% of one core) and memory (MB) of one station, idle (triggered, nothing coming)
    and running at `fps`, from an engine with `n` stations against one with a single one."""
    n = args.cost_stations
    seconds = min(args.seconds, 10)
    figures: dict[str, dict[str, float]] = {}
    for kind in ("idle", "running"):
        measured = {}
        for count in (1, n):
            gc.collect()
            rss0 = rss_mb()
            if kind == "idle":
                engine = Engine(
                    _config(count, args, tmp / f"{kind}{count}", triggered=True),
                    inference_executor=args.executor,
                )
                async with engine:
                    await asyncio.sleep(1)
                    cpu0, wall0 = _cpu(), time.monotonic()
                    await asyncio.sleep(seconds)
                    cpu = (_cpu() - cpu0) / (time.monotonic() - wall0) * 100
                    rss = rss_mb()
            else:
                result = await _running(count, args, images, tmp / f"{kind}{count}", seconds)
                cpu, rss = result
            measured[count] = (cpu, rss - rss0)
        (cpu1, mem1), (cpun, memn) = measured[1], measured[n]
        figures[kind] = {
            "cpu_percent_per_station": (cpun - cpu1) / (n - 1),
            "memory_mb_per_station": (memn - mem1) / (n - 1),
            "cpu_percent_one": cpu1,
            "cpu_percent_n": cpun,
        }
    return figures


async def _running(
    count: int, args: argparse.Namespace, images: list[Image], store: Path, seconds: float
) -> tuple[float, float]:
    cameras = Cameras(images, args.fps)
    engine = Engine(
        _config(count, args, store, triggered=False),
        source_factory=cameras,
        inference_executor=args.executor,
    )
    async with engine:
        cameras.start(seconds)
        await asyncio.sleep(1.2)
        cpu0, wall0 = _cpu(), time.monotonic()
        await engine.wait_finished()
        cpu = (_cpu() - cpu0) / (time.monotonic() - wall0) * 100
        rss = rss_mb()
    return cpu, rss


async def capacity(args: argparse.Namespace, images: list[Image], tmp: Path) -> list[Trial]:
    trials: dict[int, Trial] = {}

    async def run(count: int) -> Trial:
        if count not in trials:
            trials[count] = await trial(count, args, images, tmp / f"c{count}")
            print(trials[count].line(), flush=True)
        return trials[count]

    count = args.start
    while (await run(count)).passed and count < args.max_stations:
        count += args.step
    low = max((c for c, t in trials.items() if t.passed), default=0)
    high = min((c for c, t in trials.items() if not t.passed), default=count + 1)
    while high - low > 1:
        middle = (low + high) // 2
        if (await run(middle)).passed:
            low = middle
        else:
            high = middle
    return sorted(trials.values(), key=lambda t: t.stations)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="per trial, after warm-up")
    parser.add_argument("--start", type=int, default=8)
    parser.add_argument("--step", type=int, default=4)
    parser.add_argument("--max-stations", type=int, default=64)
    parser.add_argument("--cost-stations", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--runtime", default="pytorch", help="pytorch, onnx, openvino or auto")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    prepare_ultralytics()
    use_threads_for("pytorch")
    args.executor = inference_thread()
    camera = ConveyorCamera(seed=7, defect_rate=0.3)
    images = [camera.next_frame().image for _ in range(100)]
    bare = bare_fps(args, images)
    ceiling = bare / args.fps
    print(
        f"Edge Inspector capacity: {args.model.name} @ {args.imgsz}, runtime {args.runtime}, "
        f"{args.fps:g} fps a station, {os.cpu_count()} CPUs; bare model {bare:.1f} frames/s "
        f"(one by one) = {ceiling:.1f} stations"
    )
    print(
        f"\n1. Stations, {args.seconds:g} s each: p99 frame-to-event < {LIMIT_MS:g} ms, "
        "none dropped"
    )
    with tempfile.TemporaryDirectory() as tmp:
        trials = asyncio.run(capacity(args, images, Path(tmp)))
        best = max((t.stations for t in trials if t.passed), default=0)
        print(
            f"  capacity: {best} stations ({best / ceiling:.0%} of the bare model's one-by-one "
            f"ceiling; goal >= 16)"
        )
        print(f"\n2. One station's cost ({args.cost_stations} stations against 1)")
        cost = asyncio.run(per_station(args, images, Path(tmp)))
    for kind, figures in cost.items():
        print(
            f"  {kind:<8} CPU {figures['cpu_percent_per_station']:6.2f}% of a core, "
            f"memory {figures['memory_mb_per_station']:6.1f} MB a station "
            f"(1 station {figures['cpu_percent_one']:.1f}% CPU, "
            f"{args.cost_stations}: {figures['cpu_percent_n']:.1f}%)"
        )
    args.executor.shutdown()
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "bare_fps": bare,
                    "capacity": best,
                    "trials": [t.__dict__ | {"passed": t.passed} for t in trials],
                    "per_station": cost,
                },
                indent=2,
                default=str,
            )
        )
    return 0 if best >= 16 else 1


if __name__ == "__main__":
    raise SystemExit(main())
