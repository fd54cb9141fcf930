"""PLC edge to verdict, against the model's own time in the same run.

    python bench/bench_plc.py [--parts 100] [--device cpu|cuda:0] [--protocol modbus|opcua|both]
                              [--camera raw|jpeg|both]

`edge-inspector run` as its own process with a triggered station on the bundled model (its
camera a picture on disk: `raw`, an uncompressed frame as a machine-vision camera hands it
over, or `jpeg`, an IP camera's picture to decode); this process is the PLC: a real pymodbus
Modbus TCP server (or asyncua OPC UA server) on loopback. For each part the PLC writes the part
id and raises the trigger; the verdict is there when the sequence counter's write reaches the
PLC (the server's write hook: a scanning loop here would take the CPU the model needs).
Printed, p50 and p99:

- edge to verdict, as the PLC sees it;
- the model's own time for the same inspections (preprocess, inference, postprocess: from
  their latency records, read back over the HTTP API);
- the rest of the engine (frame capture to result, less the model), and what is left: the
  camera (reading and decoding the picture, timed here), and the link: the trigger's poll or
  notification, reading the ids, the writes.

Goal: edge to verdict p50 within the model's p50 plus 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from edge_inspector.demo import DEMO_MODEL  # noqa: E402
from edge_inspector.demo.runner import percentile  # noqa: E402
from edge_inspector.demo.synthetic import ConveyorCamera  # noqa: E402
from edge_inspector.frames import encode_jpeg  # noqa: E402
from tests.plc_servers import ModbusPlc, OpcuaPlc, free_port  # noqa: E402

SEQUENCE, STATE = 101, 102  # Modbus registers


def _plc_config(plc: ModbusPlc | OpcuaPlc) -> str:
    if isinstance(plc, ModbusPlc):
        return (
            f"{{type: modbus, host: 127.0.0.1, port: {plc.port}, poll_ms: 1, "
            "trigger: {coil: 0}, part_id: {register: 10, length: 4}, "
            f"outputs: {{result: {{register: 100}}, sequence: {{register: {SEQUENCE}}}, "
            f"state: {{register: {STATE}}}}}}}"
        )
    return (
        f"{{type: opcua, url: '{plc.url}', namespace: 'urn:edge-inspector:test-plc', "
        "publishing_ms: 0, trigger: s=Line1.Trigger, part_id: s=Line1.PartId, "
        "outputs: {result: s=Line1.Result, sequence: s=Line1.Sequence, state: s=Line1.State}}"
    )


def _engine_config(folder: Path, plc: str, port: int, device: str, camera: str) -> Path:
    # the camera: one picture, read again for each part (a real camera's exposure and transfer
    # are the camera's; rendering the synthetic conveyor would cost more than the model):
    # `raw`, an uncompressed frame as a machine-vision camera (GigE Vision, USB3 Vision) hands
    # it over; `jpeg`, an IP camera's picture, decoded for each part
    frames = folder / "frames"
    frames.mkdir()
    scene = ConveyorCamera(seed=5, defect_rate=0.5).next_frame().image
    if camera == "jpeg":
        (frames / "part.jpg").write_bytes(encode_jpeg(scene, 90))
    else:
        ok, bmp = cv2.imencode(".bmp", scene)
        assert ok
        (frames / "part.bmp").write_bytes(bmp.tobytes())
    path = folder / "engine.yaml"
    path.write_text(f"""
stations:
  - id: gate
    name: Gate
    mode: triggered
    source: {{type: folder, path: {frames}, loop: true}}
    model: {{path: {DEMO_MODEL}, imgsz: 320, device: {device}}}
    defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
    plc: {plc}
store: {{path: {folder / "store"}}}
http: {{port: {port}}}
""")
    return path


async def _trigger(plc: ModbusPlc | OpcuaPlc, high: bool) -> None:
    if isinstance(plc, ModbusPlc):
        await plc.set_coil(0, high)
    else:
        await plc.set("Trigger", high)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


async def _run(
    protocol: str, camera: str, parts: int, device: str, folder: Path
) -> dict[str, float]:
    plc: ModbusPlc | OpcuaPlc = (
        ModbusPlc() if protocol == "modbus" else OpcuaPlc(folder / "address-space")
    )
    await plc.start()
    port = free_port()
    work = folder / f"{protocol}-{camera}"
    work.mkdir()
    config = _engine_config(work, _plc_config(plc), port, device, camera)
    log = (folder / f"{protocol}-{camera}.log").open("wb")
    engine = subprocess.Popen(  # noqa: ASYNC220 (started once, before the timing)
        [sys.executable, "-m", "edge_inspector.cli", "run", "-c", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    async def register(name: str) -> int:
        if isinstance(plc, ModbusPlc):
            return (await plc.registers({"sequence": SEQUENCE, "state": STATE}[name]))[0]
        return int(await plc.value(name.capitalize()))

    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 180
        while await register("state") != 1:  # the link is up and the station running
            assert engine.poll() is None, "the engine died"
            assert time.monotonic() < deadline, "the PLC link did not come up"
            await asyncio.sleep(0.1)
        arrived: asyncio.Queue[float] = asyncio.Queue()  # when each sequence write came in

        def written(*write: Any) -> None:
            if write[-2] in (SEQUENCE, "Sequence"):  # (.., address or node name, value)
                arrived.put_nowait(time.perf_counter())

        plc.on_write = written
        for n in range(parts + 5):  # the first five warm up
            if isinstance(plc, ModbusPlc):
                await plc.set_text(10, f"P{n:05d}", 4)
            else:
                await plc.set("PartId", f"P{n:05d}")
            started = time.perf_counter()
            await _trigger(plc, True)
            done = await asyncio.wait_for(arrived.get(), 30)
            if n >= 5:
                latencies.append((done - started) * 1000)
            await _trigger(plc, False)
            await asyncio.sleep(0.02)  # low for many polls: the next part is a new edge
        # the same inspections' latency records (kept in full: they have a part id)
        base = f"http://127.0.0.1:{port}"
        rows = await asyncio.to_thread(_get, f"{base}/api/inspections?limit=500")
        records = [
            await asyncio.to_thread(_get, f"{base}/api/inspections/{row['inspection_id']}")
            for row in rows["inspections"]
            if row["part_id"] and int(row["part_id"][1:]) >= 5
        ]
    finally:
        await _stop(engine)
        log.close()
        await plc.stop()
    stages = [r["latency"] for r in records]
    camera_ms = _camera_ms(next((work / "frames").iterdir()))
    model = [s["preprocess_ms"] + s["inference_ms"] + s["postprocess_ms"] for s in stages]
    rest = [s["total_ms"] - m for s, m in zip(stages, model, strict=True)]
    p50 = statistics.median(latencies)
    return {
        "parts": len(latencies),
        "edge_to_verdict_p50_ms": p50,
        "edge_to_verdict_p99_ms": percentile(latencies, 99),
        "model_p50_ms": statistics.median(model),
        "model_p99_ms": percentile(model, 99),
        "engine_rest_p50_ms": statistics.median(rest),
        "over_model_p50_ms": p50 - statistics.median(model),
        "camera_p50_ms": camera_ms,
        "link_p50_ms": p50 - statistics.median(model) - statistics.median(rest) - camera_ms,
    }


async def _stop(engine: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as systemd stops it; killed if it is not gone in a minute (nothing the bench
    started outlives it). Waited for off this loop: the PLC it says goodbye to runs here."""
    engine.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(engine.wait, 60)
    except subprocess.TimeoutExpired:
        engine.kill()
        await asyncio.to_thread(engine.wait)


def _camera_ms(path: Path) -> float:
    """What the station's camera costs before a frame exists: read the file, decode it."""
    times = []
    for _ in range(30):
        started = time.perf_counter()
        cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--protocol", choices=["modbus", "opcua", "both"], default="both")
    parser.add_argument("--camera", choices=["raw", "jpeg", "both"], default="both")
    args = parser.parse_args()
    protocols = ["modbus", "opcua"] if args.protocol == "both" else [args.protocol]
    cameras = ["raw", "jpeg"] if args.camera == "both" else [args.camera]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in protocols:
            for camera in cameras:
                results[f"{protocol} {camera}"] = await _run(
                    protocol, camera, args.parts, args.device, Path(tmp)
                )
    print(f"PLC edge to verdict, {args.parts} parts, {platform.machine()}, {args.device}")
    print(
        f"{'':12} {'p50':>9} {'p99':>9} {'model p50':>10} {'engine rest':>12} {'camera':>8} "
        f"{'link':>7} {'p50 - model':>12}  goal <= 5 ms"
    )
    for protocol, r in results.items():
        met = "met" if r["over_model_p50_ms"] <= 5 else "NOT met"
        print(
            f"{protocol:12} {r['edge_to_verdict_p50_ms']:7.2f}ms"
            f" {r['edge_to_verdict_p99_ms']:7.2f}ms {r['model_p50_ms']:8.2f}ms"
            f" {r['engine_rest_p50_ms']:10.2f}ms {r['camera_p50_ms']:6.2f}ms"
            f" {r['link_p50_ms']:5.2f}ms {r['over_model_p50_ms']:10.2f}ms  {met}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
