"""Which runtime runs a model fastest on this machine, and whether batches of frames pay there.

`runtime: auto` (the default): a PyTorch model is exported to every runtime installed here
(ONNX Runtime, OpenVINO), each is timed on synthetic frames, and the fastest wins (within 3%
PyTorch keeps it: fewer moving parts). For one station on the model, fastest is the single
frame's time; for as many as the timed batch (four, and `detection.max_batch` at least four),
it is the time per frame as the runtime will serve them: in a batch where batches pay there,
else one by one (on two cores ONNX Runtime ran a single frame fastest,
8.4 ms, but does not batch, while OpenVINO ran 5.4 ms a frame in a batch of four: 16 five-fps
stations on ONNX Runtime, 27 on OpenVINO). Exports and the table are cached outside
the checkout, by the model's hash and input size (the table also by device, CPU and package
versions), so only a model's first start pays; a restart reads the table. An exported model
under `auto` is timed alone, for the batching decision.

Batches: stations sharing a model are served in one call only where a batch of four frames runs
at least `MIN_BATCH_GAIN` times as fast per frame as four single calls (measured on 2 cores:
PyTorch 1.7x, while ONNX Runtime and OpenVINO can gain nothing). Below that, or for an export
with a fixed batch axis, the model takes one frame a call and the choice says why.

Invariants:
- Choosing never stops the engine: an export or a runtime that fails is left out of the table
  with the reason; the model as it is (PyTorch, for a .pt) always remains.
- Nothing is downloaded or installed: a runtime whose packages are missing is left out before
  Ultralytics is asked (it would try to pip-install them), and OpenVINO's usage statistics
  (sent from a child process on every conversion and load) are switched off.
- A runtime the configuration names is used, exported if need be; nothing is timed for it and
  `detection.max_batch` applies as set.
- Everything here blocks (exports, loads, timing): call it on the inference thread
  (`detect.batcher.inference_thread`), where models run and where the timing is true.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..errors import ModelError
from ..frames import Image
from .detector import YoloDetector, model_backend, model_sha256
from .runtime import default_cache_dir, no_openvino_telemetry, prepare_ultralytics, use_threads_for

__all__ = [
    "BATCH_PROBE",
    "EXPORTS",
    "MIN_BATCH_GAIN",
    "RuntimeChoice",
    "RuntimeTiming",
    "choose_runtime",
    "export_model",
]

_LOGGER = logging.getLogger(__name__)

BATCH_PROBE = 4  # frames in the timed batch: four stations on one model
MIN_BATCH_GAIN = 1.3  # how much faster per frame a batch must run to be used
EXPORTS = ("onnx", "openvino")  # the runtimes a .pt is exported to
_TIE = 0.03  # within this of the fastest, PyTorch is kept
_WARMUP = 3
_SINGLE_RUNS = 20
_ROUNDS = 5  # turns: each runtime gets _SINGLE_RUNS / _ROUNDS single frames and a batch
_FRAMES = 8
_CONF = 0.25
_TABLE_FORMAT = 2  # bump when the timing method changes: older tables are then re-timed
# What each export needs installed, as import names (Ultralytics pip-installs what is missing)
_NEEDS = {"onnx": ("onnx", "onnxslim", "onnxruntime"), "openvino": ("openvino",)}
_VERSIONS = ("torch", "ultralytics", "onnx", "onnxruntime", "openvino", "numpy")
_SOURCE_SUFFIXES = {".pt", ".yaml", ".yml"}
_BATCH_KEYS = {"args", "batch"}  # the metadata that says whether an export's batch is fixed


@dataclass(frozen=True, slots=True)
class RuntimeTiming:
    """One runtime's row in the table: its times, or why it is not in the race."""

    runtime: str
    path: Path | None = None  # the model file it ran
    single_ms: float | None = None  # median of single-frame calls
    batch_ms: float | None = None  # per frame, median of calls with a batch of BATCH_PROBE
    fixed_batch: int | None = None  # the export's fixed batch size, if it has one
    excluded: str | None = None  # why it was not timed

    @property
    def batch_gain(self) -> float | None:
        """How many times as fast per frame a batch ran as single frames."""
        if self.single_ms is None or not self.batch_ms:
            return None
        return self.single_ms / self.batch_ms


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    """What runs a model, whether it takes batches, and why."""

    model: Path  # the model as configured
    imgsz: int
    device: str
    runtime: str
    path: Path  # the file the detector loads
    reason: str
    max_batch: int | None = None  # None: `detection.max_batch` as set
    batching: str | None = None  # why it batches or not (timed choices only)
    timings: tuple[RuntimeTiming, ...] = ()  # empty when nothing was timed
    cached: bool = False  # the table was read from the cache

    def table(self) -> str:
        """The table of timings and the decision, as `bench-model` prints it."""
        lines = [
            f"{self.model.name} @{self.imgsz} on {self.device} "
            f"({_cpu_name()}, {os.cpu_count() or 1} cores)" + (" [cached]" if self.cached else ""),
        ]
        if self.timings:
            lines.append(
                f"{'runtime':<10} {'ms/frame':>9} {f'in batch of {BATCH_PROBE}':>17} "
                f"{'batch gain':>11}"
            )
            lines += [self._row(t) for t in self.timings]
        lines.append(f"runs {self.runtime}: {self.reason}")
        if self.batching:
            lines.append(self.batching)
        return "\n".join(lines)

    def _row(self, timing: RuntimeTiming) -> str:
        if timing.excluded is not None:
            return f"{timing.runtime:<10} {'-':>9} {'-':>17} {'-':>11}  excluded: {timing.excluded}"
        batch = "-" if timing.batch_ms is None else f"{timing.batch_ms:.1f}"
        if timing.fixed_batch is not None:
            batch = f"fixed batch {timing.fixed_batch}"
        gain = timing.batch_gain
        chosen = "  chosen" if timing.runtime == self.runtime else ""
        return (
            f"{timing.runtime:<10} {timing.single_ms or 0:>9.1f} {batch:>17} "
            f"{'-' if gain is None else f'{gain:.2f}x':>11}{chosen}"
        )

    def as_json(self) -> dict[str, Any]:
        """The choice and the table as JSON (`bench-model --json`)."""
        return {
            "model": str(self.model),
            "imgsz": self.imgsz,
            "device": self.device,
            "runtime": self.runtime,
            "path": str(self.path),
            "reason": self.reason,
            "max_batch": self.max_batch,
            "batching": self.batching,
            "cached": self.cached,
            "timings": [
                {
                    "runtime": t.runtime,
                    "path": None if t.path is None else str(t.path),
                    "single_ms": t.single_ms,
                    "batch_ms": t.batch_ms,
                    "batch_gain": t.batch_gain,
                    "fixed_batch": t.fixed_batch,
                    "excluded": t.excluded,
                }
                for t in self.timings
            ],
        }


def choose_runtime(
    model: Path,
    *,
    runtime: str = "auto",
    imgsz: int = 640,
    device: str = "cpu",
    half: bool = False,
    cache_dir: Path | None = None,
    fresh: bool = False,
    stations: int = 1,
) -> RuntimeChoice:
    """What runs `model` (blocking: exports and timing when not cached), for `stations`
    frames at a time (the stations sharing it, at most `detection.max_batch`).

    `runtime` other than "auto" is obeyed (a ModelError when a .pt cannot be exported to it or
    an exported model is for another runtime). `fresh` times again instead of reading the table.
    A missing model is handed back as it is: loading it gives the error.
    """
    no_openvino_telemetry()
    backend = model_backend(model)
    plain = RuntimeChoice(model, imgsz, device, backend, model, reason="the model as it is")
    if not model.exists():
        return plain
    source = model.suffix.lower() in _SOURCE_SUFFIXES
    if runtime != "auto":
        if source and runtime != "pytorch":
            path = export_model(model, runtime, imgsz=imgsz, cache_dir=cache_dir)
        elif runtime == backend:
            path = model
        else:
            raise ModelError(f"{model.name} is a model for {backend}, not for {runtime}")
        reason = "set in the configuration (not timed)"
        return RuntimeChoice(model, imgsz, device, runtime, path, reason=reason)
    sha = model_sha256(model)
    folder = _model_folder(cache_dir, sha, imgsz)
    key = _table_key(sha, imgsz, device, half)
    if not fresh and (timings := _read_table(folder, key, model)) is not None:
        return replace(_decide(plain, timings, stations), cached=True)
    candidates = [RuntimeTiming(backend, model)]
    if source:
        candidates += [_exported(model, name, folder, imgsz, cache_dir) for name in EXPORTS]
    frames = _frames(imgsz)
    timings = _time_all(
        candidates, frames, imgsz=imgsz, device=device, half=half, cache_dir=cache_dir
    )
    if any(t.single_ms is not None for t in timings):
        _write_table(folder, key, model, timings)
    return _decide(plain, timings, stations)


def export_model(model: Path, runtime: str, *, imgsz: int, cache_dir: Path | None = None) -> Path:
    """The model exported for `runtime` at `imgsz`, from the cache or exported now (blocking).

    The export is made in a temporary folder and moved into the cache in one step, so a
    half-written export is never used. ModelError when the runtime is not installed or the
    exporter fails.
    """
    folder = _model_folder(cache_dir, model_sha256(model), imgsz)
    return _export(model, runtime, folder, imgsz=imgsz, cache_dir=cache_dir)


def _export(model: Path, runtime: str, folder: Path, *, imgsz: int, cache_dir: Path | None) -> Path:
    """`export_model` into the model's cache folder."""
    no_openvino_telemetry()
    if runtime not in _NEEDS:
        raise ModelError(f"{model.name}: cannot export to {runtime} (only {', '.join(EXPORTS)})")
    missing = [name for name in _NEEDS[runtime] if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(f"{runtime}: not installed ({', '.join(missing)} missing)")
    done = folder / runtime
    if (found := _export_in(done, runtime)) is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{runtime}-", dir=folder))
    except OSError as exc:
        raise ModelError(f"{runtime}: no room for the export in {folder}: {exc}") from exc
    try:
        copy = work / model.name  # Ultralytics writes its export next to the model it reads
        shutil.copyfile(model, copy)
        made = _run_exporter(copy, runtime, imgsz, cache_dir)
        staged = work / runtime
        staged.mkdir()
        made.rename(staged / made.name)
        with contextlib.suppress(OSError):  # another process got there first: theirs is used
            staged.rename(done)
    except OSError as exc:
        raise ModelError(f"{runtime}: export failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = _export_in(done, runtime)
    if found is None:
        raise ModelError(f"{model.name}: the {runtime} export is not where it was moved")
    _LOGGER.info("exported %s for %s at %d: %s", model.name, runtime, imgsz, found)
    return found


def _run_exporter(model: Path, runtime: str, imgsz: int, cache_dir: Path | None) -> Path:
    """Ultralytics' exporter: a dynamic batch axis, FP32, on the CPU, nothing downloaded."""
    prepare_ultralytics(cache_dir)
    from ultralytics import YOLO

    options: dict[str, Any] = {"format": runtime, "imgsz": imgsz, "dynamic": True}
    if runtime == "onnx":
        options["simplify"] = True
    try:
        with warnings.catch_warnings():
            # torch.jit.trace announces its end on Python 3.14 at every export
            warnings.simplefilter("ignore", FutureWarning)
            made = YOLO(str(model), task="detect").export(**options, device="cpu", verbose=False)
    except Exception as exc:  # the exporter raises whatever its converters raise
        raise ModelError(f"{runtime}: export failed: {type(exc).__name__}: {exc}") from exc
    return Path(str(made).rstrip("/" + os.sep))


def _export_in(folder: Path, runtime: str) -> Path | None:
    """The export a cache folder holds (named after the model it came from)."""
    if not folder.is_dir():
        return None
    pattern = "*.onnx" if runtime == "onnx" else "*_openvino_model"
    return next(iter(sorted(folder.glob(pattern))), None)


def _exported(
    model: Path, runtime: str, folder: Path, imgsz: int, cache_dir: Path | None
) -> RuntimeTiming:
    try:
        path = _export(model, runtime, folder, imgsz=imgsz, cache_dir=cache_dir)
    except ModelError as exc:
        _LOGGER.warning("%s: %s left out: %s", model.name, runtime, exc)
        return RuntimeTiming(runtime, excluded=str(exc))
    return RuntimeTiming(runtime, path)


def _ready(
    row: RuntimeTiming,
    frames: Sequence[Image],
    *,
    imgsz: int,
    device: str,
    half: bool,
    cache_dir: Path | None,
) -> tuple[YoloDetector, int | None] | str:
    """A runtime's model loaded and warmed up, with its fixed batch size; or why it cannot run."""
    assert row.path is not None
    detector = YoloDetector(row.path, imgsz=imgsz, device=device, half=half, cache_dir=cache_dir)
    fixed = _fixed_batch(row.path, row.runtime)
    try:
        detector.load()
        for frame in frames[:_WARMUP]:
            detector.predict([frame], conf=_CONF)
        if fixed is None:  # the first batch sets the runtime up for its shape
            _seconds(detector, [frames[i % len(frames)] for i in range(BATCH_PROBE)])
    except ModelError as exc:
        _LOGGER.warning("%s left out: %s", row.runtime, exc)
        return f"could not run: {exc}"
    return detector, fixed


def _time_all(
    rows: Sequence[RuntimeTiming],
    frames: Sequence[Image],
    *,
    imgsz: int,
    device: str,
    half: bool,
    cache_dir: Path | None,
) -> tuple[RuntimeTiming, ...]:
    """Load every runtime's model, then time them in turns: each round gives each runtime a
    few single frames and one batch of BATCH_PROBE. A machine whose speed drifts over seconds
    (another process, a neighbour on the host, the clock) then slows every runtime alike,
    where timing one runtime after the other would hand the race to whichever ran in a quiet
    moment."""
    loaded: dict[int, tuple[YoloDetector, int | None]] = {}
    out = list(rows)
    for index, row in enumerate(rows):
        if row.excluded is not None or row.path is None:
            continue
        ready = _ready(row, frames, imgsz=imgsz, device=device, half=half, cache_dir=cache_dir)
        if isinstance(ready, str):
            out[index] = replace(row, excluded=ready)
        else:
            loaded[index] = ready
    singles: dict[int, list[float]] = {index: [] for index in loaded}
    batches: dict[int, list[float]] = {index: [] for index in loaded}
    per_round = _SINGLE_RUNS // _ROUNDS
    for turn in range(_ROUNDS):
        for index, (detector, fixed) in list(loaded.items()):
            use_threads_for(detector.backend)  # each runtime with the threads it runs with
            start = turn * per_round
            try:
                singles[index] += [
                    _seconds(detector, [frames[(start + i) % len(frames)]])
                    for i in range(per_round)
                ]
                if fixed is None:
                    batch = [
                        frames[(turn * BATCH_PROBE + i) % len(frames)] for i in range(BATCH_PROBE)
                    ]
                    batches[index].append(_seconds(detector, batch) / BATCH_PROBE)
            except ModelError as exc:
                _LOGGER.warning("%s left out: %s", rows[index].runtime, exc)
                out[index] = replace(rows[index], excluded=f"could not run: {exc}")
                del loaded[index]
    for index, (_, fixed) in loaded.items():
        out[index] = replace(
            rows[index],
            single_ms=round(statistics.median(singles[index]) * 1000, 2),
            batch_ms=round(statistics.median(batches[index]) * 1000, 2) if batches[index] else None,
            fixed_batch=fixed,
        )
    loaded.clear()
    gc.collect()  # the runtimes' memory goes now, not whenever
    return tuple(out)


def _seconds(detector: YoloDetector, frames: list[Image]) -> float:
    start = time.perf_counter()
    detector.predict(frames, conf=_CONF)
    return time.perf_counter() - start


def _per_frame(timing: RuntimeTiming, stations: int) -> tuple[float, bool]:
    """A runtime's time per frame for `stations` frames at a time, and whether that is a
    batch's: for as many stations as the timed batch (or more), where batches pay there."""
    if stations >= BATCH_PROBE and _batching(timing)[0] is None and timing.batch_ms:
        return timing.batch_ms, True
    return timing.single_ms or 0.0, False


def _decide(
    plain: RuntimeChoice, timings: tuple[RuntimeTiming, ...], stations: int = 1
) -> RuntimeChoice:
    """The fastest wins: a single frame's time, or, for as many stations sharing the model as
    the timed batch (`stations`: at most `detection.max_batch`), the time per frame in a batch
    where batches pay on that runtime; it batches only where a batch pays."""
    timed = [t for t in timings if t.single_ms is not None]
    if not timed:
        return replace(plain, reason="no runtime could be timed", timings=timings)
    fastest = min(timed, key=lambda t: _per_frame(t, stations)[0])
    best, batched = _per_frame(fastest, stations)
    many = stations >= BATCH_PROBE
    if batched:
        reason = (
            f"the fastest for {stations} stations: {best:.1f} ms a frame in a batch of "
            f"{BATCH_PROBE}"
        )
    elif many:
        reason = f"the fastest for {stations} stations, a frame at a time"
    else:
        reason = "the fastest single frame"
    chosen = fastest
    torch_row = next((t for t in timed if t.runtime == "pytorch"), None)
    if (
        torch_row is not None
        and torch_row is not fastest
        and _per_frame(torch_row, stations)[0] <= best * (1 + _TIE)
    ):
        chosen = torch_row
        reason = (
            f"within {_TIE:.0%} of {fastest.runtime}"
            + (f" for {stations} stations" if many else "")
            + ", and fewer moving parts"
        )
    if len(timed) == 1:
        reason = "the only runtime" if len(timings) == 1 else "the only runtime that ran"
    max_batch, batching = _batching(chosen)
    path = chosen.path or plain.path
    return replace(
        plain,
        runtime=chosen.runtime,
        path=path,
        reason=reason,
        max_batch=max_batch,
        batching=batching,
        timings=timings,
    )


def _batching(chosen: RuntimeTiming) -> tuple[int | None, str]:
    """Whether a timed runtime takes batches (None: `detection.max_batch`; 1: one frame a
    call), and why."""
    gain = chosen.batch_gain
    if chosen.fixed_batch is not None:
        return 1, f"{chosen.runtime}: the export has a fixed batch axis: not batching"
    if gain is None:
        return 1, f"{chosen.runtime}: a batch could not be timed: not batching"
    if gain < MIN_BATCH_GAIN:
        return 1, (
            f"{chosen.runtime}: a batch of {BATCH_PROBE} ran {gain:.2f}x as fast per frame as "
            f"{BATCH_PROBE} single frames (batching needs {MIN_BATCH_GAIN:.1f}x): not batching"
        )
    return None, (
        f"{chosen.runtime}: a batch of {BATCH_PROBE} runs {gain:.2f}x as fast per frame as "
        f"{BATCH_PROBE} single frames: batching"
    )


def _fixed_batch(path: Path, runtime: str) -> int | None:
    """The batch size an export is fixed to, from the metadata Ultralytics writes into it
    (None: dynamic, or not known)."""
    try:
        if runtime == "openvino" and path.is_dir():
            metadata = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
        elif runtime == "onnx":
            import onnx

            props = onnx.load(str(path), load_external_data=False).metadata_props
            metadata = {p.key: ast.literal_eval(p.value) for p in props if p.key in _BATCH_KEYS}
        else:
            return None
        args = metadata.get("args") or {}
        if "dynamic" in args and not args["dynamic"]:
            return int(metadata.get("batch") or args.get("batch") or 1)
    except (OSError, ValueError, SyntaxError, AttributeError, ImportError, yaml.YAMLError):
        return None
    return None


def _frames(imgsz: int) -> list[Image]:
    """Conveyor scenes at the model's size (4:3, as cameras give them), always the same."""
    import numpy as np

    from ..demo.synthetic import random_scene

    rng = np.random.default_rng(20240601)
    width, height = max(imgsz, 320), max(imgsz * 3 // 4, 240)
    return [
        random_scene(rng, width=width, height=height, defect_rate=0.6).image for _ in range(_FRAMES)
    ]


# -- the cache ---------------------------------------------------------------------------------


def _model_folder(cache_dir: Path | None, sha: str, imgsz: int) -> Path:
    return (cache_dir or default_cache_dir()) / "exports" / f"{sha[:16]}-{imgsz}"


def _table_key(sha: str, imgsz: int, device: str, half: bool) -> dict[str, Any]:
    """What a timing depends on: the model, its input, where it runs and on what software."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "format": _TABLE_FORMAT,
        "sha256": sha,
        "imgsz": imgsz,
        "device": device,
        "half": half,
        "cpu": _cpu_name(),
        "cores": os.cpu_count() or 1,
        "python": platform.python_version(),
        "versions": versions,
    }


def _table_file(folder: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"timings-{digest}.json"


def _read_table(folder: Path, key: dict[str, Any], model: Path) -> tuple[RuntimeTiming, ...] | None:
    """The cached timings, if they are for this key and every export they name is still there."""
    try:
        data = json.loads(_table_file(folder, key).read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        timings = []
        for row in data["timings"]:
            stored = row.pop("path")
            path = model if stored is None and row["excluded"] is None else None
            if stored is not None:
                path = folder / stored
                if not path.exists():
                    return None
            timings.append(RuntimeTiming(**row, path=path))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tuple(timings)


def _write_table(
    folder: Path, key: dict[str, Any], model: Path, timings: tuple[RuntimeTiming, ...]
) -> None:
    rows = []
    for timing in timings:
        row = asdict(timing)
        # exports relative to the cache folder; the model itself by None (it may move)
        row["path"] = (
            None
            if timing.path is None or timing.path == model
            else str(timing.path.relative_to(folder))
        )
        rows.append(row)
    data = {"key": key, "measured_at": datetime.now(UTC).isoformat(), "timings": rows}
    target = _table_file(folder, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        partial.replace(target)
    except OSError as exc:  # the engine runs on; the next start times again
        _LOGGER.warning("cannot cache the runtime timings in %s: %s", target, exc)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown CPU"
