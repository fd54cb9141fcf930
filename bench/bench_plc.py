"""PLC edge to verdict, against the model's own time in the same run.

    python bench/bench_plc.py [--parts 100] [--device cpu|cuda:0] [--protocol modbus|opcua|both]

A real pymodbus Modbus TCP server (and asyncua OPC UA server) on loopback is the PLC; a
triggered station on the bundled model, its camera a frame already in memory (the camera's own
latency is not the link's). For each part the "PLC" raises the trigger and waits until the
sequence counter in its own memory changes: that is when a PLC program would read the verdict.
Printed: p50 and p99 of edge to verdict, the model's own time for the same inspections
(preprocess, inference, postprocess, from their latency records), and the difference.
Goal: p50 within the model's p50 plus 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from edge_inspector.config import EngineConfig
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.runner import percentile
from edge_inspector.demo.synthetic import ConveyorCamera
from edge_inspector.engine import Engine
from edge_inspector.events import InspectionResult
from edge_inspector.frames import Frame, Image
from edge_inspector.sinks import EventSink
from edge_inspector.sources import FrameSource
from tests.plc_servers import ModbusPlc, OpcuaPlc


class StillCamera(FrameSource):
    """One picture, taken at once whenever asked."""

    live = True

    def __init__(self, image: Image) -> None:
        self._image = image
        self._seq = 0

    async def read(self, *, not_before: float | None = None) -> Frame:
        self._seq += 1
        return Frame(self._image, self._seq, "memory")


class Inferences(EventSink):
    def __init__(self) -> None:
        self.ms: list[float] = []

    async def on_inspection(self, result: InspectionResult) -> None:
        # the model's own time, as Ultralytics counts it: preprocess, inference, postprocess
        latency = result.latency
        self.ms.append(latency.preprocess_ms + latency.inference_ms + latency.postprocess_ms)


def _config(store: Path, plc: dict[str, object], device: str) -> EngineConfig:
    station = {
        "id": "gate",
        "name": "Gate",
        "mode": "triggered",
        "source": {"type": "push"},
        "model": {"path": str(DEMO_MODEL), "imgsz": 320, "device": device},
        "defects": {"scratch": 0.4, "dent": 0.4, "crack": 0.4, "spot": 0.4},
        "plc": plc,
    }
    return EngineConfig.model_validate({"stations": [station], "store": {"path": str(store)}})


async def _run(
    protocol: str, parts: int, device: str, image: Image, folder: Path
) -> dict[str, float]:
    plc: ModbusPlc | OpcuaPlc
    if protocol == "modbus":
        plc = ModbusPlc()
        config: dict[str, object] = {
            "type": "modbus",
            "host": "127.0.0.1",
            "port": plc.port,
            "poll_ms": 2,
            "trigger": {"coil": 0},
            "outputs": {"result": {"register": 100}, "sequence": {"register": 101}},
        }
    else:
        plc = OpcuaPlc(folder / "address-space")
        config = {
            "type": "opcua",
            "url": plc.url,
            "namespace": "urn:edge-inspector:test-plc",
            "publishing_ms": 2,
            "trigger": "s=Line1.Trigger",
            "outputs": {"result": "s=Line1.Result", "sequence": "s=Line1.Sequence"},
        }
    await plc.start()
    sink = Inferences()
    engine = Engine(
        _config(folder / protocol, config, device),
        sinks=[sink],
        source_factory=lambda _: StillCamera(image),
    )
    latencies: list[float] = []
    try:
        await engine.start()
        link = engine.plc["gate"]
        await asyncio.wait_for(link.connected.wait(), 30)

        async def sequence() -> int:
            if isinstance(plc, ModbusPlc):
                return (await plc.registers(101))[0]
            return int(await plc.value("Sequence"))

        async def trigger(high: bool) -> None:
            if isinstance(plc, ModbusPlc):
                await plc.set_coil(0, high)
            else:
                await plc.set("Trigger", high)

        for n in range(parts + 5):  # the first five warm up
            before = await sequence()
            started = time.perf_counter()
            await trigger(True)
            while await sequence() == before:  # noqa: ASYNC110 (a PLC scan reads every 0.5 ms)
                await asyncio.sleep(0.0005)  # (not a busy loop: it would starve the model)
            if n >= 5:
                latencies.append((time.perf_counter() - started) * 1000)
            await trigger(False)
            await asyncio.sleep(0.01)  # low for a few polls: the next part is a new edge
    finally:
        await engine.stop()
        await plc.stop()
    model = sink.ms[5:]
    return {
        "edge_to_verdict_p50_ms": statistics.median(latencies),
        "edge_to_verdict_p99_ms": percentile(latencies, 99),
        "model_p50_ms": statistics.median(model),
        "model_p99_ms": percentile(model, 99),
        "overhead_p50_ms": statistics.median(latencies) - statistics.median(model),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--protocol", choices=["modbus", "opcua", "both"], default="both")
    args = parser.parse_args()
    image = ConveyorCamera(seed=5, defect_rate=0.5).next_frame().image
    protocols = ["modbus", "opcua"] if args.protocol == "both" else [args.protocol]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in protocols:
            results[protocol] = await _run(protocol, args.parts, args.device, image, Path(tmp))
    print(f"PLC edge to verdict, {args.parts} parts, {platform.processor() or platform.machine()}")
    print(f"{'':8} {'p50':>8} {'p99':>8} {'model p50':>10} {'p50 - model':>12}  goal <= 5 ms")
    for protocol, r in results.items():
        print(
            f"{protocol:8} {r['edge_to_verdict_p50_ms']:7.2f}ms"
            f" {r['edge_to_verdict_p99_ms']:7.2f}ms"
            f" {r['model_p50_ms']:9.2f}ms {r['overhead_p50_ms']:11.2f}ms"
            f"  {'met' if r['overhead_p50_ms'] <= 5 else 'NOT met'}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
