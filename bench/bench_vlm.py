"""The VLM must not slow detection, and must not grow in memory, measured in one run.

    python bench/bench_vlm.py [--frames 300] [--rounds 3] [--device cpu|cuda:0] [--incidents 1000]

1. Detection frames/s of one station on the same frames with the VLM off, and with the VLM on
   against a server (a separate process speaking Ollama's API) that takes 2 s for every chat.
   Rounds alternate; medians. Goal: on/off >= 0.95.
2. Memory over 1,000 incidents: incidents go through the real enrichment path (store, queue,
   agent, Ollama client, store update, sinks) against a fast server; the process's resident
   memory is sampled every 100 incidents. Goal: flat after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

from bench_engine import MemorySource

from edge_inspector.config import EngineConfig
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorCamera
from edge_inspector.detect.batcher import inference_thread
from edge_inspector.detect.runtime import prepare_ultralytics, use_threads_for
from edge_inspector.engine import Engine
from edge_inspector.events import (
    BoundingBox,
    Detection,
    Incident,
    InspectionResult,
    ModelInfo,
)
from edge_inspector.frames import Image
from edge_inspector.sinks import EventSink
from edge_inspector.vlm.enricher import pending_result

MANUALS = Path(__file__).parent.parent / "edge_inspector" / "demo" / "manuals"


@contextlib.contextmanager
def fake_ollama(delay: float) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ollama_server", "--delay", str(delay)],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class Counter(EventSink):
    def __init__(self) -> None:
        self.inspections = 0
        self.incidents = 0
        self.updates = 0

    async def on_inspection(self, result: InspectionResult) -> None:
        self.inspections += 1

    async def on_incident(self, incident: Incident) -> None:
        self.incidents += 1

    async def on_incident_update(self, incident: Incident) -> None:
        self.updates += 1


def _config(store: Path, *, model: Path, device: str, imgsz: int, host: str | None) -> EngineConfig:
    data: dict[str, object] = {
        "stations": [
            {
                "id": "cam",
                "name": "Camera",
                "source": {"type": "push"},
                "model": {"path": str(model), "imgsz": imgsz, "device": device},
                "defects": {"scratch": 0.45, "dent": 0.45, "crack": 0.45, "spot": 0.45},
                "fps": None,
            }
        ],
        "store": {"path": str(store)},
        "manuals": {"dir": str(MANUALS)},
    }
    if host is not None:
        data["vlm"] = {
            "host": host,
            "request_timeout": 30,
            "queue_size": 100_000,
            "actions": [
                {
                    "name": "divert_part",
                    "description": "reject the part",
                    "parameters": {
                        "properties": {"bin": {"type": "string"}},
                        "required": ["bin"],
                    },
                    "target": {"type": "webhook", "url": "http://127.0.0.1:9/divert"},
                    "rate_limit": {"calls": 10_000, "per_seconds": 1},
                }
            ],
        }
    return EngineConfig.model_validate(data)


async def detection_run(
    images: list[Image], store: Path, executor: object, host: str | None, args: argparse.Namespace
) -> dict[str, float]:
    config = _config(store, model=args.model, device=args.device, imgsz=args.imgsz, host=host)
    go = asyncio.Event()
    source = MemorySource(images, go)
    counter = Counter()
    engine = Engine(
        config,
        sinks=[counter],
        source_factory=lambda _s: source,
        inference_executor=executor,  # type: ignore[arg-type]
    )
    async with engine:
        started = time.perf_counter()
        go.set()
        await engine.wait_finished()
        elapsed = time.perf_counter() - started
        queued = engine.enricher.queue_depth if engine.enricher else 0
        vlm_answered = engine.enricher.enriched if engine.enricher else 0
    return {
        "fps": len(images) / elapsed,
        "incidents": counter.incidents,
        "vlm_queued_at_end": queued,
        "vlm_answered": vlm_answered,
    }


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def memory_run(
    count: int, store: Path, executor: object, args: argparse.Namespace, host: str
) -> list[tuple[int, float]]:
    config = _config(store, model=args.model, device=args.device, imgsz=args.imgsz, host=host)
    counter = Counter()
    engine = Engine(config, sinks=[counter], inference_executor=executor)  # type: ignore[arg-type]
    crop = store / "crop.jpg"
    import cv2

    store.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(crop), ConveyorCamera(seed=3, defect_rate=1.0).next_frame().image)
    box = BoundingBox(x1=10, y1=10, x2=60, y2=60)
    samples: list[tuple[int, float]] = []
    async with engine:
        assert engine.enricher is not None
        for n in range(1, count + 1):
            incident = Incident(
                incident_id=uuid.uuid4().hex,
                station_id="cam",
                station_name="Camera",
                created_at=datetime.now(UTC),
                inspection_id=uuid.uuid4().hex,
                defect_class="scratch",
                confidence=0.9,
                boxes=(box,),
                detections=(
                    Detection(
                        class_name="scratch", class_id=0, confidence=0.9, box=box, defect=True
                    ),
                ),
                crop_path=str(crop),
                frame_path=str(crop),
                model=ModelInfo(name="demo.pt", sha256="0" * 64),
                latency_ms=20,
                vlm=pending_result(config.vlm.model),
            )
            await engine.store.add_incident(incident)
            await engine.sinks.on_incident(incident)
            if n % 50 == 0:
                await engine.enricher.wait_idle(timeout=120)
            if n % 100 == 0:
                samples.append((n, _rss_mb()))
        await engine.enricher.wait_idle(timeout=120)
    assert counter.updates >= count, (counter.updates, count)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--incidents", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds per chat (slow VLM)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    prepare_ultralytics()
    use_threads_for("pytorch")
    camera = ConveyorCamera(seed=11, defect_rate=0.6)
    images = [camera.next_frame().image for _ in range(args.frames)]
    executor = inference_thread()
    off: list[dict[str, float]] = []
    on: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, fake_ollama(args.delay) as slow:
        # warm-up: load the model once on the inference thread
        asyncio.run(detection_run(images[:20], Path(tmp) / "warm", executor, None, args))
        for r in range(args.rounds):
            off.append(
                asyncio.run(detection_run(images, Path(tmp) / f"off{r}", executor, None, args))
            )
            on.append(
                asyncio.run(detection_run(images, Path(tmp) / f"on{r}", executor, slow, args))
            )
    with tempfile.TemporaryDirectory() as tmp, fake_ollama(0.0) as fast:
        samples = asyncio.run(memory_run(args.incidents, Path(tmp) / "mem", executor, args, fast))
    executor.shutdown()

    med_off = statistics.median(r["fps"] for r in off)
    med_on = statistics.median(r["fps"] for r in on)
    ratio = med_on / med_off
    print(
        f"Edge Inspector VLM benchmark: {args.frames} frames x {args.rounds} rounds, "
        f"device {args.device}, {os.cpu_count()} CPUs"
    )
    print(
        "\n1. Detection with the VLM off versus on (server answering each chat in "
        f"{args.delay:g} s)"
    )
    for name, runs in (("VLM off", off), ("VLM on, slow server", on)):
        print(
            f"  {name:<22} {statistics.median(r['fps'] for r in runs):7.1f} frames/s   "
            f"incidents {statistics.median(r['incidents'] for r in runs):.0f}   "
            f"VLM answered {statistics.median(r['vlm_answered'] for r in runs):.0f}, "
            f"queued at the end {statistics.median(r['vlm_queued_at_end'] for r in runs):.0f}"
        )
    print(
        "  rounds (frames/s): off "
        + ", ".join(f"{r['fps']:.1f}" for r in off)
        + "; on "
        + ", ".join(f"{r['fps']:.1f}" for r in on)
    )
    print(f"  ratio on/off: {ratio:.3f}   (goal >= 0.95)")
    print(f"\n2. Resident memory over {args.incidents} incidents through the VLM path")
    print("  " + "  ".join(f"{n}: {mb:.1f} MB" for n, mb in samples))
    warm_n, warm = samples[min(1, len(samples) - 1)]
    growth = samples[-1][1] - warm
    print(f"  growth after the first {warm_n} incidents: {growth:+.1f} MB")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"off": off, "on": on, "ratio": ratio, "memory_mb": samples, "growth_mb": growth},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
