"""The `edge-inspector` command as a user runs it: real processes, real files, no network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from edge_inspector.demo import DEMO_CONFIG
from edge_inspector.demo.synthetic import ConveyorFrame
from tests.conftest import jpeg

CLI = [sys.executable, "-m", "edge_inspector.cli"]


def _offline() -> list[str]:
    """Run in a network namespace with no network at all, where the machine allows it."""
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-n", "true"], check=False).returncode == 0
    ):
        return ["unshare", "-n"]
    return []


def test_inspect_reports_every_image_and_fails_only_for_unreadable_ones(
    tmp_path: Path,
    demo_model: Path,
    defect_scenes: list[ConveyorFrame],
    clean_scene: ConveyorFrame,
) -> None:
    defect = tmp_path / "defect.jpg"
    defect.write_bytes(jpeg(defect_scenes[0].image, 95))
    clean = tmp_path / "clean.png"
    cv2.imwrite(str(clean), clean_scene.image)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg(clean_scene.image)[:1000])
    missing = tmp_path / "missing.jpg"
    proc = subprocess.run(
        [
            *CLI,
            "inspect",
            str(defect),
            str(truncated),
            str(clean),
            str(missing),
            "--model",
            str(demo_model),
            "--imgsz",
            "320",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["image"]).name for r in lines] == [
        "defect.jpg",
        "truncated.jpg",
        "clean.png",
        "missing.jpg",
    ]
    found = {d["class"] for d in lines[0]["detections"]}
    assert {t.class_name for t in defect_scenes[0].truths} <= found
    box = lines[0]["detections"][0]["box"]
    assert len(box) == 4 and box[0] < box[2] and box[1] < box[3]
    assert lines[2]["detections"] == []
    assert "truncated JPEG" in lines[1]["error"]
    assert "missing.jpg" in lines[3]["error"]
    assert "truncated.jpg: truncated JPEG" in proc.stderr


def test_inspect_exits_zero_when_every_image_was_read_even_with_defects(
    tmp_path: Path,
    demo_model: Path,
    defect_scenes: list[ConveyorFrame],
) -> None:
    image = tmp_path / "d.jpg"
    image.write_bytes(jpeg(defect_scenes[1].image, 95))
    proc = subprocess.run(
        [*CLI, "inspect", str(image), "--model", str(demo_model), "--imgsz", "320"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{image}: ")
    assert defect_scenes[1].truths[0].class_name in proc.stdout


def test_check_accepts_the_demo_configuration() -> None:
    proc = subprocess.run(
        [*CLI, "check", "-c", str(DEMO_CONFIG)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK (1 station(s))" in proc.stdout


def test_check_loads_models_and_names_unknown_classes(tmp_path: Path, demo_model: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"""
stations:
  - id: a
    name: A
    source: {{type: push}}
    model: {{path: {demo_model}}}
    defects: {{scratches: 0.5}}
""")
    proc = subprocess.run(
        [*CLI, "check", "-c", str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1
    assert "stations[a].defects.scratches: not a class of demo-defects.pt" in proc.stderr


def test_demo_runs_offline_to_completion(tmp_path: Path) -> None:
    store = tmp_path / "demo-store"
    proc = subprocess.run(
        [*_offline(), *CLI, "demo", "--frames", "60", "--fps", "0", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "DEFECT" in out
    assert "Edge Inspector demo summary" in out
    assert "frames inspected   6" in out  # 60 or a few more in flight
    assert "latency (ms)       p50" in out
    with sqlite3.connect(store / "history.sqlite3") as db:
        (incidents,) = db.execute("SELECT COUNT(*) FROM incidents").fetchone()
        (inspections,) = db.execute("SELECT COUNT(*) FROM inspections").fetchone()
        (frame_path,) = db.execute("SELECT frame_path FROM incidents LIMIT 1").fetchone()
    assert incidents >= 1
    assert inspections >= 60
    assert not Path(frame_path).is_absolute()  # where it is in the store, not on this disk
    assert (store / "images" / frame_path).is_file()


def test_demo_serves_the_http_api_while_it_runs(tmp_path: Path) -> None:
    import json
    import signal
    import time
    import urllib.error
    import urllib.request

    from tests.service import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "demo",
            "--duration",
            "120",
            "--fps",
            "5",
            "--store",
            str(tmp_path / "s"),
            "--http",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stations") as r:
                    stations = json.loads(r.read())["stations"]
                if stations and stations[0]["inspections"] > 0:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "no HTTP API"
            time.sleep(0.3)
        assert stations[0]["station_id"] == "conveyor_1"
        url = f"http://127.0.0.1:{port}/api/stations/conveyor_1/snapshot.jpg"
        with urllib.request.urlopen(url) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"HTTP API on http://127.0.0.1:{port}" in out


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, demo_model: Path) -> None:
    import urllib.error
    import urllib.request

    from tests.service import free_port

    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"""
stations:
  - id: belt
    name: Belt
    source: {{type: synthetic, seed: 5}}
    model: {{path: {demo_model}, imgsz: 320}}
    defects: {{scratch: 0.5, dent: 0.5, crack: 0.5, spot: 0.5}}
    fps: 10
store: {{path: {tmp_path / "store"}}}
http: {{port: {port}}}
""")
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(config)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # what the engine has inspected, as it says (however loaded the machine is)
        made, deadline = 0, time.monotonic() + 180
        while made < 5:
            assert proc.poll() is None, "the engine ended"
            assert time.monotonic() < deadline, f"only {made} inspections in 180 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stations/belt") as r:
                    made = json.loads(r.read())["inspections"]
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    with sqlite3.connect(tmp_path / "store" / "history.sqlite3") as db:
        (inspections,) = db.execute("SELECT COUNT(*) FROM inspections").fetchone()
    assert inspections >= made, "inspections made before SIGTERM were not written"


@pytest.mark.parametrize("args", [["run"], ["inspect", "x.jpg"], ["bogus"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_train_on_a_users_dataset_and_export_the_weights(tmp_path: Path, demo_model: Path) -> None:
    from edge_inspector.demo.train import make_dataset

    data = make_dataset(tmp_path / "dataset", train_images=8, val_images=4, seed=3)
    proc = subprocess.run(
        [
            *CLI,
            "train",
            "--data",
            str(data),
            "--model",
            "yolo11n.yaml",
            "--epochs",
            "1",
            "--imgsz",
            "160",
            "--batch",
            "4",
            "--project",
            str(tmp_path / "runs"),
            "--name",
            "mine",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = tmp_path / "runs" / "mine" / "weights" / "best.pt"
    assert f"weights: {weights}" in proc.stdout
    assert weights.is_file()

    model = tmp_path / "model.pt"
    model.write_bytes(demo_model.read_bytes())
    proc = subprocess.run(
        [*CLI, "export", "--model", str(model), "--format", "onnx", "--imgsz", "320"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = Path(proc.stdout.strip().splitlines()[-1])
    assert exported == tmp_path / "model.onnx"
    assert exported.stat().st_size > 1_000_000
    check = subprocess.run(
        [
            *CLI,
            "inspect",
            str(tmp_path / "dataset" / "images" / "val" / "00000.jpg"),
            "--model",
            str(exported),
            "--imgsz",
            "320",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert "detections" in json.loads(check.stdout)


def test_export_of_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "export", "--model", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "nope.pt: model file not found" in proc.stderr
