"""Memory over an hour of frames: the engine's resident memory must stay flat.

    python bench/bench_memory.py [--minutes 60] [--fps 5] [--stations 1] [--json FILE]

An hour of one 5-fps camera is 18,000 frames. They go through the whole engine (the model,
rules, tracking, incidents and their pictures in the store, the sinks) as fast as the machine
takes them, on the bundled model, with a defect on about a third of the parts. The resident
memory is sampled every 2% of the run. Flat means: from a quarter of the way in (when the
caches, the allocator and the tracker have settled) to the end, the memory grows by less than
10 MB, and the growth over the last half is no faster than over the second quarter (nothing
accumulates per frame). The first quarter is shown, not judged.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_inspector.config import EngineConfig
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorCamera
from edge_inspector.detect.batcher import inference_thread
from edge_inspector.detect.runtime import prepare_ultralytics, use_threads_for
from edge_inspector.engine import Engine
from edge_inspector.errors import SourceExhaustedError
from edge_inspector.events import Incident, InspectionResult
from edge_inspector.frames import Frame, Image
from edge_inspector.sinks import EventSink
from edge_inspector.sources import FrameSource

GROWTH_LIMIT_MB = 10.0


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class CyclingSource(FrameSource):
    """`count` frames from a loop of pre-decoded pictures, as fast as the station takes them."""

    live = False

    def __init__(self, images: list[Image], count: int, go: asyncio.Event) -> None:
        self._images = images
        self._count = count
        self._go = go
        self._seq = 0

    async def read(self, *, not_before: float | None = None) -> Frame:
        await self._go.wait()
        if self._seq >= self._count:
            raise SourceExhaustedError("the hour is over")
        self._seq += 1
        return Frame(self._images[self._seq % len(self._images)], self._seq, "loop")


class Sampler(EventSink):
    """Counts what came out and samples the resident memory every `every` inspections."""

    def __init__(self, every: int) -> None:
        self._every = every
        self.inspections = 0
        self.incidents = 0
        self.samples: list[tuple[int, float]] = []

    async def on_incident(self, incident: Incident) -> None:
        self.incidents += 1

    async def on_inspection(self, result: InspectionResult) -> None:
        self.inspections += 1
        if self.inspections % self._every == 0:
            self.samples.append((self.inspections, rss_mb()))


def _at(samples: list[tuple[int, float]], fraction: float, total: int) -> float:
    """The sample nearest a fraction of the run."""
    return min(samples, key=lambda s: abs(s[0] - fraction * total))[1]


async def run(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    per_station = int(args.minutes * 60 * args.fps)
    total = per_station * args.stations
    camera = ConveyorCamera(seed=11, defect_rate=0.35)
    images = [camera.next_frame().image for _ in range(240)]
    go = asyncio.Event()
    sources = {
        f"cam{i}": CyclingSource(images[i:] + images[:i], per_station, go)
        for i in range(args.stations)
    }
    sampler = Sampler(max(1, total // 50))
    config = EngineConfig.model_validate(
        {
            "stations": [
                {
                    "id": sid,
                    "name": f"Camera {sid}",
                    "source": {"type": "push"},
                    "model": {"path": str(args.model), "imgsz": args.imgsz, "runtime": "pytorch"},
                    "defects": {"scratch": 0.45, "dent": 0.45, "crack": 0.45, "spot": 0.45},
                    "fps": None,
                }
                for sid in sources
            ],
            "store": {"path": str(store)},
        }
    )
    engine = Engine(
        config,
        sinks=[sampler],
        source_factory=lambda station: sources[station.id],
        inference_executor=args.executor,
    )
    async with engine:
        gc.collect()
        start_rss = rss_mb()
        started = time.perf_counter()
        go.set()
        await engine.wait_finished()
        elapsed = time.perf_counter() - started
    samples = sampler.samples
    quarter, half, end = (_at(samples, f, total) for f in (0.25, 0.5, 1.0))
    return {
        "frames": sampler.inspections,
        "incidents": sampler.incidents,
        "seconds": elapsed,
        "fps": sampler.inspections / elapsed,
        "rss_start_mb": start_rss,
        "rss_quarter_mb": quarter,
        "rss_half_mb": half,
        "rss_end_mb": end,
        "growth_after_quarter_mb": end - quarter,
        "growth_second_quarter_mb": half - quarter,
        "growth_second_half_mb": end - half,
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="of camera time")
    parser.add_argument("--fps", type=float, default=5.0, help="the camera's, not the run's")
    parser.add_argument("--stations", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    prepare_ultralytics()
    use_threads_for("pytorch")
    args.executor = inference_thread()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    args.executor.shutdown()
    print(
        f"Edge Inspector memory: {args.minutes:g} min of {args.stations} camera(s) at "
        f"{args.fps:g} fps = {figures['frames']} frames, {figures['incidents']} incidents, "
        f"in {figures['seconds']:.0f} s ({figures['fps']:.1f} frames/s)"
    )
    print("  frames   resident MB")
    for frames, mb in figures["samples"][:: max(1, len(figures["samples"]) // 10)]:
        print(f"  {frames:6d}   {mb:8.1f}")
    print(
        f"  start {figures['rss_start_mb']:.1f} MB, a quarter in {figures['rss_quarter_mb']:.1f}, "
        f"half {figures['rss_half_mb']:.1f}, end {figures['rss_end_mb']:.1f}"
    )
    second_quarter = figures["growth_second_quarter_mb"]
    second_half = figures["growth_second_half_mb"]
    flat = figures["growth_after_quarter_mb"] < GROWTH_LIMIT_MB and second_half <= max(
        second_quarter * 2, 2.0
    )
    print(
        f"  growth after the first quarter: {figures['growth_after_quarter_mb']:+.1f} MB "
        f"(second quarter {second_quarter:+.1f}, second half {second_half:+.1f}); goal < "
        f"{GROWTH_LIMIT_MB:g} MB and not accelerating: {'met' if flat else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
