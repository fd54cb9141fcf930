"""`runtime: auto`: the demo model exported to every runtime installed, timed, the fastest run;
batches only where they pay; a named runtime obeyed; the cache spares a restart all of it."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from edge_inspector.config import EngineConfig, parse_config
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.detect import autoruntime
from edge_inspector.detect.autoruntime import (
    EXPORTS,
    MIN_BATCH_GAIN,
    RuntimeChoice,
    RuntimeTiming,
    choose_runtime,
)
from edge_inspector.detect.detector import model_backend
from edge_inspector.engine import Engine
from edge_inspector.errors import ConfigError, ModelError
from tests.conftest import ALL_DEFECTS, jpeg

CLI = [sys.executable, "-m", "edge_inspector.cli"]
IMGSZ = 320


def _installed(runtime: str) -> bool:
    needs = {"onnx": ("onnx", "onnxslim", "onnxruntime"), "openvino": ("openvino",)}[runtime]
    return all(importlib.util.find_spec(name) is not None for name in needs)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture(scope="module")
def chosen(cache: Path) -> RuntimeChoice:
    """The demo model exported and timed once for the module (the expensive part)."""
    return choose_runtime(DEMO_MODEL, imgsz=IMGSZ, cache_dir=cache)


def _each(time_one: Callable[..., RuntimeTiming]) -> Callable[..., tuple[RuntimeTiming, ...]]:
    """A stand-in for the timing of every runtime, from one for a single runtime."""

    def time_all(
        rows: Sequence[RuntimeTiming], *_: object, **__: object
    ) -> tuple[RuntimeTiming, ...]:
        return tuple(row if row.excluded is not None else time_one(row) for row in rows)

    return time_all


def _no_work(*_: object, **__: object) -> RuntimeTiming:
    raise AssertionError("the cache should have spared this")


def _auto_station() -> str:
    return f"""
        - id: pushed
          name: Pushed
          mode: triggered
          source: {{type: push}}
          model: {{path: MODEL, imgsz: {IMGSZ}, runtime: auto}}
          defects: {ALL_DEFECTS}
    """


def test_auto_times_every_runtime_installed_and_runs_the_fastest(chosen: RuntimeChoice) -> None:
    expected = ["pytorch", *(r for r in EXPORTS if _installed(r))]
    assert [t.runtime for t in chosen.timings if t.excluded is None] == expected
    for timing in chosen.timings:
        if timing.excluded is None:
            assert timing.single_ms and timing.single_ms > 0, timing
            assert timing.batch_ms and timing.batch_ms > 0, timing
    timed = {t.runtime: t for t in chosen.timings if t.single_ms is not None}
    fastest = min(timed.values(), key=lambda t: t.single_ms or 0.0)
    assert chosen.runtime in {fastest.runtime, "pytorch"}  # PyTorch wins ties within 3%
    if chosen.runtime != fastest.runtime:
        assert (timed["pytorch"].single_ms or 0) <= (fastest.single_ms or 0) * 1.03
    assert chosen.path.exists()
    assert model_backend(chosen.path) == chosen.runtime
    assert not chosen.cached
    table = chosen.table()
    for runtime in expected:
        assert runtime in table
    assert f"runs {chosen.runtime}" in table


def test_batches_are_used_only_where_they_pay(chosen: RuntimeChoice) -> None:
    gain = next(t.batch_gain for t in chosen.timings if t.runtime == chosen.runtime)
    assert gain is not None
    assert chosen.batching is not None
    if gain >= MIN_BATCH_GAIN:
        assert chosen.max_batch is None  # detection.max_batch as set
        assert chosen.batching.endswith(": batching")
    else:
        assert chosen.max_batch == 1
        assert chosen.batching.startswith(f"{chosen.runtime}: a batch of 4 ran {gain:.2f}x")
        assert chosen.batching.endswith("not batching")


def test_a_second_choice_reads_the_cache_and_exports_nothing(
    chosen: RuntimeChoice, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [p for p in cache.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert any(p.name.startswith("timings-") for p in files)
    monkeypatch.setattr(autoruntime, "_run_exporter", _no_work)
    monkeypatch.setattr(autoruntime, "_time_all", _no_work)
    again = choose_runtime(DEMO_MODEL, imgsz=IMGSZ, cache_dir=cache)
    assert again.cached
    assert (again.runtime, again.path, again.max_batch) == (
        chosen.runtime,
        chosen.path,
        chosen.max_batch,
    )
    assert again.timings == chosen.timings
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_fresh_times_again_on_the_cached_exports(
    chosen: RuntimeChoice, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[str] = []

    def fake_time(row: RuntimeTiming, *_: object, **__: object) -> RuntimeTiming:
        timed.append(row.runtime)
        return replace(row, single_ms=10.0, batch_ms=5.0)

    monkeypatch.setattr(autoruntime, "_run_exporter", _no_work)
    monkeypatch.setattr(autoruntime, "_time_all", _each(fake_time))
    monkeypatch.setattr(autoruntime, "_write_table", lambda *_: None)  # keep the real table
    again = choose_runtime(DEMO_MODEL, imgsz=IMGSZ, cache_dir=cache, fresh=True)
    assert timed == [t.runtime for t in chosen.timings if t.excluded is None]
    assert not again.cached
    assert again.runtime == "pytorch"  # a tie: PyTorch keeps it
    assert again.max_batch is None  # 2x per frame in a batch


def test_a_named_runtime_is_used_even_when_slower(chosen: RuntimeChoice, cache: Path) -> None:
    slowest = max(
        (t for t in chosen.timings if t.single_ms is not None), key=lambda t: t.single_ms or 0.0
    )
    if slowest.runtime == chosen.runtime:
        pytest.skip("only one runtime is installed")
    named = choose_runtime(DEMO_MODEL, runtime=slowest.runtime, imgsz=IMGSZ, cache_dir=cache)
    assert named.runtime == slowest.runtime
    assert named.path == slowest.path
    assert named.timings == ()  # nothing is timed for a named runtime
    assert named.max_batch is None  # and detection.max_batch applies as set
    assert "configuration" in named.reason


def test_a_runtime_that_cannot_export_is_left_out_and_pytorch_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(model: Path, runtime: str, *_: object) -> Path:
        raise ModelError(f"{runtime}: export failed: RuntimeError: the converter broke")

    monkeypatch.setattr(autoruntime, "_run_exporter", broken)
    # and OpenVINO as if its package were missing: Ultralytics is not even asked
    monkeypatch.setitem(autoruntime._NEEDS, "openvino", ("openvino", "no_such_runtime_package"))
    choice = choose_runtime(DEMO_MODEL, imgsz=IMGSZ, cache_dir=tmp_path)
    rows = {t.runtime: t for t in choice.timings}
    assert rows["onnx"].excluded == "onnx: export failed: RuntimeError: the converter broke"
    assert rows["openvino"].excluded == (
        "openvino: not installed (no_such_runtime_package missing)"
    )
    assert choice.runtime == "pytorch"
    assert choice.path == DEMO_MODEL
    assert choice.reason == "the only runtime that ran"
    assert (rows["pytorch"].single_ms or 0) > 0
    assert "excluded: onnx: export failed" in choice.table()
    assert not list(tmp_path.rglob("*.onnx"))


def test_a_named_runtime_that_cannot_export_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(autoruntime._NEEDS, "onnx", ("no_such_runtime_package",))
    with pytest.raises(ModelError, match="onnx: not installed"):
        choose_runtime(DEMO_MODEL, runtime="onnx", imgsz=IMGSZ, cache_dir=tmp_path)


def test_an_export_with_a_fixed_batch_is_not_batched(chosen: RuntimeChoice, tmp_path: Path) -> None:
    export = next((t.path for t in chosen.timings if t.runtime == "openvino" and t.path), None)
    if export is None:
        pytest.skip("OpenVINO is not installed")
    fixed = tmp_path / export.name
    shutil.copytree(export, fixed)
    metadata = yaml.safe_load((fixed / "metadata.yaml").read_text())
    metadata["args"]["dynamic"] = False
    (fixed / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    choice = choose_runtime(fixed, imgsz=IMGSZ, cache_dir=tmp_path / "cache")
    assert (choice.runtime, choice.path) == ("openvino", fixed)  # auto on an export: that file
    assert choice.max_batch == 1
    assert choice.batching == "openvino: the export has a fixed batch axis: not batching"


def test_a_missing_model_is_left_to_the_loader(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pt"
    choice = choose_runtime(missing, imgsz=IMGSZ, cache_dir=tmp_path)
    assert (choice.path, choice.timings) == (missing, ())


def test_a_runtime_the_exported_file_is_not_for_is_a_configuration_error() -> None:
    data = {
        "stations": [
            {
                "id": "a",
                "name": "A",
                "source": {"type": "push"},
                "model": {"path": "/models/best.onnx", "runtime": "openvino"},
                "defects": {"scratch": 0.5},
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert "stations[0].model: runtime openvino cannot run best.onnx" in str(caught.value)
    data["stations"][0]["model"] = {"path": "/models/best.pt", "runtime": "openvino"}
    assert parse_config(data).stations[0].model.runtime == "openvino"


async def test_the_engine_logs_the_table_and_runs_the_chosen_runtime(
    chosen: RuntimeChoice,
    cache: Path,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_inspector")
    config = make_config(_auto_station(), extra="detection: {max_batch: 4}\n")
    async with Engine(config, cache_dir=cache) as engine:
        queue = next(iter(engine._inference.values()))
        assert queue.detector.backend == chosen.runtime
        assert queue.max_batch == (4 if chosen.max_batch is None else 1)
        result = await engine.stations["pushed"].inspect_image(jpeg(defect_scenes[0].image))
        # its state says what runs it (the API, MQTT and Home Assistant's diagnostics show it)
        assert engine.stations["pushed"].state().runtime == chosen.runtime
    assert result.detections
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "edge_inspector.engine")
    assert f"model {DEMO_MODEL.name} @{IMGSZ}:" in logged
    assert f"runs {chosen.runtime}" in logged
    for timing in chosen.timings:
        assert timing.runtime in logged


# single frame and batch of 4, ms a frame: ONNX Runtime the fastest single frame and a batch
# as slow per frame as single frames, OpenVINO the fastest per frame in a batch (as measured)
MEASURED = {"pytorch": (30.0, 17.7), "onnx": (20.0, 19.8), "openvino": (25.0, 12.0)}


def _timed_as(monkeypatch: pytest.MonkeyPatch, times: dict[str, tuple[float, float]]) -> None:
    """Every runtime timed at `times` (nothing timed, no table read or written)."""

    def fake_time(row: RuntimeTiming, *_: object, **__: object) -> RuntimeTiming:
        single, batch = times[row.runtime]
        return replace(row, single_ms=single, batch_ms=batch)

    monkeypatch.setattr(autoruntime, "_time_all", _each(fake_time))
    monkeypatch.setattr(autoruntime, "_read_table", lambda *_: None)
    monkeypatch.setattr(autoruntime, "_write_table", lambda *_: None)  # keep the real table


async def test_the_engine_does_not_batch_where_batches_do_not_pay(
    chosen: RuntimeChoice,
    cache: Path,
    make_config: Callable[..., EngineConfig],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not _installed("onnx"):
        pytest.skip("ONNX Runtime is not installed")
    _timed_as(monkeypatch, MEASURED)
    caplog.set_level(logging.INFO, logger="edge_inspector")
    config = make_config(_auto_station(), extra="detection: {max_batch: 4}\n")
    async with Engine(config, cache_dir=cache) as engine:
        queue = next(iter(engine._inference.values()))
        assert queue.detector.backend == "onnx"
        assert queue.max_batch == 1
    assert (
        "onnx: a batch of 4 ran 1.01x as fast per frame as 4 single frames "
        "(batching needs 1.3x): not batching" in caplog.text
    )


def test_several_stations_get_the_runtime_fastest_per_frame_as_it_serves_them() -> None:
    """One station: the fastest single frame. Several: each runtime's time per frame as it
    will serve them, in a batch where batches pay there, else one by one (as measured on two
    cores: ONNX Runtime the fastest single frame but not batching, OpenVINO far faster in a
    batch)."""
    plain = RuntimeChoice(DEMO_MODEL, IMGSZ, "cpu", "pytorch", DEMO_MODEL, reason="as it is")
    rows = (
        RuntimeTiming("pytorch", DEMO_MODEL, single_ms=14.6, batch_ms=10.0),  # 1.46x: batches
        RuntimeTiming("onnx", Path("m.onnx"), single_ms=8.4, batch_ms=6.7),  # 1.25x: does not
        RuntimeTiming("openvino", Path("m_openvino_model"), single_ms=9.7, batch_ms=5.4),
    )
    one = autoruntime._decide(plain, rows)
    assert (one.runtime, one.max_batch, one.reason) == ("onnx", 1, "the fastest single frame")
    four = autoruntime._decide(plain, rows, 4)
    assert (four.runtime, four.path, four.max_batch) == ("openvino", rows[2].path, None)
    assert four.reason == "the fastest for 4 stations: 5.4 ms a frame in a batch of 4"
    # a runtime that does not batch counts its single frame, not the batch it will not run
    without = autoruntime._decide(plain, rows[:2], 4)  # ONNX 8.4 one by one, PyTorch 10.0
    assert (without.runtime, without.max_batch) == ("onnx", 1)
    assert without.reason == "the fastest for 4 stations, a frame at a time"
    faster = (replace(rows[0], batch_ms=8.0), rows[1])
    assert autoruntime._decide(plain, faster, 4).runtime == "pytorch"
    assert autoruntime._decide(plain, faster, 1).runtime == "onnx"
    # fewer stations than the timed batch: single frames decide
    two = autoruntime._decide(plain, rows, 2)
    assert (two.runtime, two.reason) == ("onnx", "the fastest single frame")
    # PyTorch within 3% of the fastest, as the stations are served, keeps the model
    close = (replace(rows[0], batch_ms=5.5), *rows[1:])
    tie = autoruntime._decide(plain, close, 4)
    assert (tie.runtime, tie.max_batch) == ("pytorch", None)
    assert tie.reason == "within 3% of openvino for 4 stations, and fewer moving parts"
    assert autoruntime._decide(plain, (replace(rows[0], batch_ms=5.6), *rows[1:]), 4).runtime == (
        "openvino"
    )


@pytest.mark.parametrize(
    ("auto", "named", "max_batch", "expected"),
    [
        (4, 0, 4, ("openvino", 4)),  # four stations share it: OpenVINO's batch is the fastest
        (1, 3, 4, ("onnx", 1)),  # one station (three others on another model): a single frame
        (4, 0, 1, ("onnx", 1)),  # max_batch 1: no batch will be served, single frames decide
    ],
)
async def test_the_engine_chooses_for_the_stations_that_share_a_model(
    *,
    auto: int,
    named: int,
    max_batch: int,
    expected: tuple[str, int],
    chosen: RuntimeChoice,
    cache: Path,
    make_config: Callable[..., EngineConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not (_installed("onnx") and _installed("openvino")):
        pytest.skip("ONNX Runtime and OpenVINO are not both installed")
    _timed_as(monkeypatch, MEASURED)
    stations = [_auto_station().replace("pushed", f"auto{i}") for i in range(auto)]
    stations += [
        _auto_station().replace("pushed", f"named{i}").replace("runtime: auto", "runtime: pytorch")
        for i in range(named)
    ]
    config = make_config("".join(stations), extra=f"detection: {{max_batch: {max_batch}}}\n")
    async with Engine(config, cache_dir=cache) as engine:
        queue = engine.stations["auto0"]._inference
        assert (queue.detector.backend, queue.max_batch) == expected


async def test_the_engine_runs_a_named_runtime_untimed(
    chosen: RuntimeChoice,
    cache: Path,
    make_config: Callable[..., EngineConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = next((t for t in chosen.timings if t.runtime != chosen.runtime and t.path), None)
    if other is None:
        pytest.skip("only one runtime is installed")
    monkeypatch.setattr(autoruntime, "_time_all", _no_work)
    config = make_config(
        _auto_station().replace("runtime: auto", f"runtime: {other.runtime}"),
        extra="detection: {max_batch: 4}\n",
    )
    async with Engine(config, cache_dir=cache) as engine:
        queue = next(iter(engine._inference.values()))
        assert queue.detector.backend == other.runtime
        assert queue.detector.path == other.path
        assert queue.max_batch == 4  # as set: nothing was timed


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "EDGE_INSPECTOR_CACHE": str(cache)},
    )


def test_bench_model_prints_the_table(chosen: RuntimeChoice, cache: Path) -> None:
    proc = _cli("bench-model", str(DEMO_MODEL), "--imgsz", str(IMGSZ), cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == chosen.table().replace("\n", " [cached]\n", 1).splitlines()
    proc = _cli("bench-model", str(DEMO_MODEL), "--imgsz", str(IMGSZ), "--json", cache=cache)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["runtime"] == chosen.runtime
    assert shown["cached"] is True
    assert [t["runtime"] for t in shown["timings"]] == [t.runtime for t in chosen.timings]
    many = ("--imgsz", str(IMGSZ), "--stations", "4")
    proc = _cli("bench-model", str(DEMO_MODEL), *many, cache=cache)
    assert proc.returncode == 0, proc.stderr
    four = autoruntime._decide(chosen, chosen.timings, 4)
    assert f"runs {four.runtime}: {four.reason}\n" in proc.stdout
    proc = _cli("bench-model", str(DEMO_MODEL), "--stations", "0", cache=cache)
    assert proc.returncode != 0
    assert "--stations 0: give at least 1" in proc.stderr


def test_check_says_what_runs_each_model(
    chosen: RuntimeChoice, cache: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "stations:\n"
        "  - {id: a, name: A, source: {type: push}, defects: {scratch: 0.5},\n"
        f"     model: {{path: {DEMO_MODEL}, imgsz: {IMGSZ}}}}}\n"
    )
    proc = _cli("check", "-c", str(config), "--no-plc", cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert f"  runs on {chosen.runtime} ({chosen.reason})" in proc.stdout
