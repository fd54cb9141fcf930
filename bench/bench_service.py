"""Frame-to-event latency: a websocket client of the engine service versus the in-process
engine, on the same frames, measured in one run.

    python bench/bench_service.py [--frames 150] [--fps 10] [--rounds 2] [--device cpu|cuda:0]

The same JPEG frames (a folder source paced at --fps, so nothing queues) go through
1. the engine in this process, with an event sink taking the time each inspection arrives;
2. `edge-inspector run` as a separate process, with a websocket client of its HTTP API taking
   the time each `inspection` message arrives.
Latency = arrival (wall clock) - the frame's capture time stamped in the event. The first 10
frames of each run are warm-up. Rounds alternate; medians of the rounds' p50 and p99.
Goal: service <= 1.10 x in-process + 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))

from edge_inspector.config import load_config
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorCamera
from edge_inspector.engine import Engine
from edge_inspector.events import InspectionResult
from edge_inspector.sinks import EventSink

WARMUP = 10


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def write_config(
    folder: Path, frames: Path, *, fps: float, device: str, model: Path, port: int
) -> Path:
    store = folder / "store"
    config = folder / "engine.yaml"
    config.write_text(
        f"""
stations:
  - id: bench
    name: Bench
    source: {{type: folder, path: {frames}}}
    model: {{path: {model}, imgsz: 320, device: "{device}"}}
    defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
    fps: {fps}
    enabled: false
store: {{path: {store}}}
http: {{port: {port}}}
"""
    )
    return config


class Arrivals(EventSink):
    def __init__(self, total: int) -> None:
        self.ms: list[float] = []
        self.total = total
        self.done = asyncio.Event()

    async def on_inspection(self, result: InspectionResult) -> None:
        self.ms.append((time.time() - result.timestamp.timestamp()) * 1000)
        if len(self.ms) >= self.total:
            self.done.set()


async def in_process(config_path: Path, total: int) -> list[float]:
    config = load_config(config_path)
    arrivals = Arrivals(total)
    engine = Engine(config, sinks=[arrivals])
    await engine.start()
    try:
        engine.set_enabled("bench", True)
        await asyncio.wait_for(arrivals.done.wait(), timeout=total * 2 + 120)
    finally:
        await engine.stop()
    return arrivals.ms[WARMUP:]


async def service(config_path: Path, port: int, total: int) -> list[float]:
    path = [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before any timing)
        [sys.executable, "-m", "edge_inspector.cli", "run", "-c", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    arrivals: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 180
            while True:
                try:
                    async with session.get(f"{url}/api/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start")
                await asyncio.sleep(0.2)
            async with session.ws_connect(f"{url}/api/ws?events=inspection") as ws:
                async with asyncio.timeout(30):
                    while (await ws.receive_json())["type"] != "ready":
                        pass
                async with session.post(
                    f"{url}/api/stations/bench/enabled", json={"enabled": True}
                ) as r:
                    assert r.status == 200
                async with asyncio.timeout(total * 2 + 120):
                    while len(arrivals) < total:
                        message = await ws.receive_json()
                        now = time.time()
                        if message["type"] == "inspection":
                            stamp = message["data"]["timestamp"].replace("Z", "+00:00")
                            arrivals.append(
                                (now - datetime.fromisoformat(stamp).timestamp()) * 1000
                            )
    finally:
        proc.terminate()
        proc.wait(60)
    return arrivals[WARMUP:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    frames = work / "frames"
    frames.mkdir()
    camera = ConveyorCamera(seed=11, defect_rate=0.4)
    for n in range(args.frames):
        cv2.imwrite(str(frames / f"{n:05d}.jpg"), camera.next_frame().image)

    results: dict[str, list[dict[str, float]]] = {"in_process": [], "service": []}
    for round_no in range(args.rounds):
        for kind in ("in_process", "service"):
            port = 18000 + round_no * 2 + (kind == "service")
            folder = work / f"{kind}{round_no}"
            folder.mkdir()
            config = write_config(
                folder,
                frames,
                fps=args.fps,
                device=args.device,
                model=args.model.resolve(),
                port=port,
            )
            if kind == "in_process":
                ms = asyncio.run(in_process(config, args.frames))
            else:
                ms = asyncio.run(service(config, port, args.frames))
            figures = {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "n": len(ms)}
            results[kind].append(figures)
            print(
                f"round {round_no + 1} {kind:<10} p50 {figures['p50']:7.2f} ms  "
                f"p99 {figures['p99']:7.2f} ms  ({figures['n']} frames)",
                flush=True,
            )

    summary: dict[str, float] = {}
    for kind, rounds in results.items():
        summary[f"{kind}_p50_ms"] = statistics.median(r["p50"] for r in rounds)
        summary[f"{kind}_p99_ms"] = statistics.median(r["p99"] for r in rounds)
    summary["ratio_p50"] = summary["service_p50_ms"] / summary["in_process_p50_ms"]
    summary["ratio_p99"] = summary["service_p99_ms"] / summary["in_process_p99_ms"]
    goal = 1.10 * summary["in_process_p50_ms"] + 5.0
    summary["goal_p50_ms"] = goal
    met = summary["service_p50_ms"] <= goal
    print(
        f"\nframe-to-event p50: in-process {summary['in_process_p50_ms']:.2f} ms, websocket "
        f"client of the service {summary['service_p50_ms']:.2f} ms (ratio "
        f"{summary['ratio_p50']:.3f}; goal <= 1.10x + 5 ms = {goal:.2f} ms: "
        f"{'met' if met else 'NOT met'})\n"
        f"frame-to-event p99: in-process {summary['in_process_p99_ms']:.2f} ms, service "
        f"{summary['service_p99_ms']:.2f} ms (ratio {summary['ratio_p99']:.3f})"
    )
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
