"""MQTT publishing, measured against a baseline in the same run, on a real local Mosquitto.

    python bench/bench_mqtt.py [--events 3000] [--frames 600] [--block 25]

1. Events/s through the durable outbox (SQLite, acknowledged per PUBACK) versus bare paho
   QoS 1 publishes of the same payloads to the same broker. Goal: outbox >= 0.5x bare.
2. Detection frames/s of one station with MQTT publishing on versus off. Goal: >= 0.95x. Two
   engines, one publishing and one not, take turns on blocks of the same conveyor frames.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from bench_engine import BlockSource, EventClock, Turns  # bench/ is on the path as a script
from paho.mqtt.enums import CallbackAPIVersion

from edge_inspector.config import EngineConfig, MqttConfig
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorCamera
from edge_inspector.detect.batcher import inference_thread
from edge_inspector.detect.runtime import prepare_ultralytics, use_threads_for
from edge_inspector.engine import Engine
from edge_inspector.events import BoundingBox, Detection, Incident, ModelInfo
from edge_inspector.frames import Image
from edge_inspector.mqtt import MqttBridge, attach_mqtt


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = folder / "mosquitto.conf"
    config.write_text(
        f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def incident(n: int) -> Incident:
    box = BoundingBox(x1=10, y1=20, x2=40, y2=60)
    det = Detection(
        class_name="scratch", class_id=0, confidence=0.91, box=box, track_id=n, defect=True
    )
    return Incident(
        incident_id=f"{n:032x}",
        station_id="belt",
        station_name="Belt",
        created_at=datetime.now(UTC),
        inspection_id=f"{n:032x}",
        defect_class="scratch",
        confidence=0.91,
        boxes=(box,),
        detections=(det,),
        track_id=n,
        model=ModelInfo(name="demo-defects.pt", sha256="ab" * 32),
        latency_ms=23.5,
    )


def bare_paho(port: int, payloads: list[bytes]) -> float:
    acked = threading.Semaphore(0)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    client.on_publish = lambda *_: acked.release()
    client.max_inflight_messages_set(64)  # the outbox's window
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    for payload in payloads:
        client.publish("edge_inspector/belt/defect", payload, qos=1)
    for _ in payloads:
        acked.acquire()
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return len(payloads) / elapsed


async def through_outbox(port: int, events: list[Incident], folder: Path) -> float:
    station = EngineConfig.model_validate(
        {
            "stations": [
                {
                    "id": "belt",
                    "name": "Belt",
                    "source": {"type": "push"},
                    "model": {"path": "m.pt"},
                    "defects": {"scratch": 0.5},
                }
            ]
        }
    ).stations
    bridge = MqttBridge(
        MqttConfig(url=f"mqtt://127.0.0.1:{port}", node_id="bench", discovery=False),
        station,
        outbox_path=folder / f"outbox-{time.monotonic_ns()}.sqlite3",
    )
    await bridge.start()
    await asyncio.to_thread(bridge.connected.wait, 10)
    started = time.perf_counter()
    for event in events:
        await bridge.on_incident(event)
    while bridge.queued:  # noqa: ASYNC110  (the outbox is filled and emptied by threads)
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - started
    await bridge.stop()
    return len(events) / elapsed


def _station_config(folder: Path, name: str) -> EngineConfig:
    return EngineConfig.model_validate(
        {
            "stations": [
                {
                    "id": "belt",
                    "name": "Belt",
                    "source": {"type": "push"},
                    "model": {"path": str(DEMO_MODEL), "imgsz": 320},
                    "defects": {"scratch": 0.45, "dent": 0.45, "crack": 0.45, "spot": 0.45},
                    "fps": None,
                }
            ],
            "store": {"path": str(folder / f"store-{name}-{time.monotonic_ns()}")},
            "mqtt": {
                "node_id": "bench",
                "publish_inspections": True,
                "inspections_per_second": 100,
            },
        }
    )


async def detection(
    images: list[Image], folder: Path, port: int, executor: ThreadPoolExecutor, block: int
) -> tuple[float, float, list[float]]:
    """Two engines on the same model thread, one publishing to the broker and one not, take
    turns on blocks of the same frames (each in turn first), as bench_engine's part 1 does:
    the machine's drift cancels out of each pair. Returns frames/s off and on and each pair's
    on/off ratio."""
    sources = {"off": BlockSource(images), "on": BlockSource(images)}
    clocks = {name: EventClock({"belt": source}) for name, source in sources.items()}
    engines = {
        name: Engine(
            _station_config(folder, name),
            sinks=[clocks[name]],
            source_factory=lambda _station, source=source: source,  # type: ignore[misc]
            inference_executor=executor,
        )
        for name, source in sources.items()
    }
    bridge = attach_mqtt(engines["on"], f"mqtt://127.0.0.1:{port}")
    turns = {name: Turns(sources[name], clocks[name]) for name in sources}

    for engine in engines.values():
        await engine.start()
    await bridge.start()
    await asyncio.to_thread(bridge.connected.wait, 10)
    try:
        for name in engines:
            await turns[name].take(block)  # warm-up
        total = {"off": 0.0, "on": 0.0}
        ratios = []
        for index in range(0, len(images) - block, block):
            took = {}
            for name in ("off", "on") if (index // block) % 2 == 0 else ("on", "off"):
                took[name] = await turns[name].take(block)
                total[name] += took[name]
            ratios.append(took["off"] / took["on"])
    finally:
        for name, source in sources.items():
            await source.close()
            await engines[name].stop()
        await bridge.stop()
    frames = turns["off"].done - block
    return frames / total["off"], frames / total["on"], ratios


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--block", type=int, default=25, help="frames per turn (default 25)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prepare_ultralytics()
    use_threads_for("pytorch")
    events = [incident(n) for n in range(args.events)]
    payloads = [e.model_dump_json().encode() for e in events]
    camera = ConveyorCamera(seed=42, defect_rate=0.5)
    images = [camera.next_frame().image for _ in range(args.frames)]
    executor = inference_thread()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker, port = start_broker(folder)
        try:
            bare, outbox = [], []
            for _ in range(args.rounds):
                bare.append(bare_paho(port, payloads))
                outbox.append(asyncio.run(through_outbox(port, events, folder)))
            off, on, pairs = asyncio.run(detection(images, folder, port, executor, args.block))
        finally:
            broker.terminate()
            broker.wait(10)
    executor.shutdown()

    def med(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    print(
        f"Edge Inspector MQTT benchmark: {args.events} events (~{len(payloads[0])} bytes), "
        f"{args.frames} frames, {args.rounds} rounds, real Mosquitto on loopback"
    )
    print(f"  bare paho QoS 1 publishes      {med(bare):9.0f} events/s")
    print(
        f"  through the durable outbox     {med(outbox):9.0f} events/s   "
        f"ratio {med(outbox) / med(bare):.3f}  (goal >= 0.5)"
    )
    print(f"  detection, publishing off      {off:9.1f} frames/s")
    print(
        f"  detection, publishing on       {on:9.1f} frames/s   "
        f"ratio {med(pairs):.3f}  (goal >= 0.95; median of {len(pairs)} pairs of "
        f"{args.block}-frame turns, {min(pairs):.3f} to {max(pairs):.3f}; all together "
        f"{on / off:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
