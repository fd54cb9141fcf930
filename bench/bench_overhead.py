"""Where the engine's own time goes: the whole per-frame path with a model that takes no time.

    python bench/bench_overhead.py [--frames 3000] [--profile]

The detector is replaced by one that answers at once with one detection, so what is left is
the engine: the station's loop, the hand-off to the inference thread and back, rules, tracking,
the result, the store and the sinks. Prints the microseconds a frame costs; `--profile` adds
cProfile's top entries by cumulative time. Compare it with the model's milliseconds a frame
(bench_engine.py) to see what share of a frame is the engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_engine import EventClock, MemorySource  # bench/ is on the path when run as a script

from edge_inspector.config import EngineConfig
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorCamera
from edge_inspector.detect import detector as detector_module
from edge_inspector.engine import Engine
from edge_inspector.events import ModelInfo

NAMES = {0: "scratch", 1: "dent", 2: "crack", 3: "spot"}


def instant_detector() -> None:
    """Swap the model for one that takes no time and sees one faint scratch in every frame."""
    answer = detector_module.RawDetections(
        np.array([[10, 10, 50, 50]], np.float32),
        np.array([0.3], np.float32),
        np.array([0], np.int64),
        0.0,
        0.0,
        0.0,
    )

    def load(self: Any) -> None:
        self._model = object()
        self._names = NAMES
        self._info = ModelInfo(name="instant", sha256="0" * 64, runtime="none")

    detector_module.YoloDetector.load = load  # type: ignore[method-assign]
    detector_module.YoloDetector.predict = (  # type: ignore[method-assign]
        lambda self, images, *, conf: [answer for _ in images]
    )


async def run(frames: int, profile: bool, store: Path) -> float:
    camera = ConveyorCamera(seed=42, defect_rate=0.5)
    images = [camera.next_frame().image for _ in range(60)]
    config = EngineConfig.model_validate(
        {
            "stations": [
                {
                    "id": "cam0",
                    "name": "Camera",
                    "source": {"type": "push"},
                    "model": {"path": str(DEMO_MODEL), "imgsz": 320, "runtime": "pytorch"},
                    "defects": {"scratch": 0.45, "dent": 0.45, "crack": 0.45, "spot": 0.45},
                    "fps": None,
                }
            ],
            "store": {"path": str(store)},
        }
    )
    go = asyncio.Event()
    sources = {"cam0": MemorySource([images[i % 60] for i in range(frames)], go)}
    clock = EventClock(sources)
    profiler = cProfile.Profile()
    async with Engine(config, sinks=[clock], source_factory=lambda s: sources[s.id]) as engine:
        started = time.perf_counter()
        go.set()
        if profile:
            profiler.enable()
        await engine.wait_finished()
        profiler.disable()
        elapsed = time.perf_counter() - started
    if profile:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return elapsed / frames * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    instant_detector()
    with tempfile.TemporaryDirectory() as tmp:
        us = asyncio.run(run(args.frames, args.profile, Path(tmp)))
    print(f"engine without the model: {us:.0f} us a frame ({args.frames} frames, one station)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
