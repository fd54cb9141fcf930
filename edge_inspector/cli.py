"""The `edge-inspector` command.

edge-inspector check -c FILE          validate a configuration (and load its models)
edge-inspector run -c FILE            run every station until SIGINT/SIGTERM
edge-inspector inspect IMAGE... --model PATH [--json]
edge-inspector demo [--frames N | --duration S]
edge-inspector train --data DATA.yaml  /  export --model PATH --format onnx
edge-inspector bench-model MODEL      time the model on each runtime installed; which runs it
edge-inspector schema [--out DIR]     write the JSON Schema of the events
edge-inspector dataset export --out DIR  confirmed/rejected incidents as a YOLO dataset
edge-inspector manuals index DIR      index equipment manuals (Markdown, text, PDF)
edge-inspector manuals search QUERY   ranked passages: file, section, page, excerpt
edge-inspector vlm eval [DIR] --host URL --model NAME  judge a VLM model on a labelled set
edge-inspector vlm make-set DIR       write the demo's labelled set
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import EngineConfig, ModelConfig, StationConfig, load_config
from .errors import ConfigError, EdgeInspectorError, ImageDecodeError
from .events import Incident
from .redact import RedactingFilter
from .sinks import EventSink

__all__ = ["main"]

_LOGGER = logging.getLogger("edge_inspector")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # no credential in any log line, whoever logs it
    for noisy in ("ultralytics", "PIL", "matplotlib", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


# -- check / run ----------------------------------------------------------------------------


def _load_model(model: ModelConfig, stations: int = 1) -> tuple[set[str], str]:
    """Choose what runs a model for the `stations` sharing it as `run` would (exported and
    timed, cached) and load it: its class names, and what runs it (blocking)."""
    from .detect.autoruntime import choose_runtime
    from .detect.detector import YoloDetector

    choice = choose_runtime(
        model.path,
        runtime=model.runtime,
        imgsz=model.imgsz,
        device=model.device,
        half=model.half,
        stations=stations,
    )
    detector = YoloDetector(choice.path, imgsz=model.imgsz, device=model.device)
    detector.load()
    runs = f"{choice.runtime} ({choice.reason})"
    return set(detector.names.values()), runs + (f"; {choice.batching}" if choice.batching else "")


async def _check_models(config: EngineConfig) -> tuple[list[str], dict[str, str]]:
    """Problems with the stations' models, and what runs each station's model."""
    from .detect.batcher import inference_thread

    problems: list[str] = []
    loaded: dict[ModelConfig, set[str]] = {}
    runs: dict[ModelConfig, str] = {}
    loop = asyncio.get_running_loop()
    inference = inference_thread()  # one thread runs every model (detect.batcher)
    sharing = collections.Counter(s.model for s in config.stations)
    try:
        for station in config.stations:
            model = station.model
            if model not in loaded:
                try:
                    loaded[model], runs[model] = await loop.run_in_executor(
                        inference,
                        _load_model,
                        model,
                        min(sharing[model], config.detection.max_batch),
                    )
                except EdgeInspectorError as exc:
                    problems.append(f"stations[{station.id}].model.path: {exc}")
                    loaded[model] = set()
                    continue
            names = loaded[model]
            problems += [
                f"stations[{station.id}].defects.{cls}: not a class of {model.path.name} "
                f"(it knows: {', '.join(sorted(names))})"
                for cls in sorted(set(station.defects) - names)
                if names
            ]
    finally:
        inference.shutdown(wait=True)
    return problems, {s.id: runs[s.model] for s in config.stations if s.model in runs}


async def _check_plcs(config: EngineConfig) -> list[str]:
    """Connect to each station's PLC and read every point of its map once."""
    from .plc.link import make_driver

    problems: list[str] = []
    for station in config.stations:
        if station.plc is None:
            continue
        try:
            driver = make_driver(station.plc)
        except EdgeInspectorError as exc:
            problems.append(f"stations[{station.id}].plc: {exc}")
            continue
        try:
            async with asyncio.timeout(15):
                await driver.connect()
        except (EdgeInspectorError, TimeoutError, OSError) as exc:
            problems.append(f"stations[{station.id}].plc: {exc or 'no answer in 15 s'}")
        finally:
            await driver.close()
    return problems


def _plc_map(station: StationConfig) -> list[str]:
    """The register or node map a station's PLC configuration produces."""
    plc = station.plc
    if plc is None:
        return []
    codes = plc.codes or {n: i for i, n in enumerate(station.defects, start=1)}
    lines = [f"  PLC: {plc.describe()}"]
    lines += [f"    {name:<12} {where:<40} {way}" for name, where, way in plc.points()]
    lines.append(
        "    result 1 OK, 2 NG, 0 no verdict; confidence per mille; state 1 running, "
        "2 disabled, 3 unavailable, 0 stopped"
    )
    lines.append("    defect codes: " + ", ".join(f"{n}={c}" for n, c in codes.items()))
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problems, runs = ([], {}) if args.no_load else asyncio.run(_check_models(config))
    if not args.no_plc:
        problems += asyncio.run(_check_plcs(config))
    if problems:
        print(f"{args.config}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for station in config.stations:
        print(
            f"{station.id}: {station.name} — {station.source.type} source, {station.mode}, "
            f"model {station.model.path.name}, defects {', '.join(station.defects)}"
        )
        if station.id in runs:
            print(f"  runs on {runs[station.id]}")
        for line in _plc_map(station):
            print(line)
    print(f"{args.config}: OK ({len(config.stations)} station(s))")
    return 0


class _LogSink(EventSink):
    async def on_incident(self, incident: Incident) -> None:
        _LOGGER.info(
            "defect on %s: %s %.2f (incident %s)",
            incident.station_id,
            incident.defect_class,
            incident.confidence,
            incident.incident_id,
        )


async def _run(config: EngineConfig, mqtt_url: str | None) -> None:
    from .app import Application, stop_signals

    with stop_signals() as stop:
        async with Application(config, sinks=[_LogSink()], mqtt_url=mqtt_url) as app:
            engine = app.engine
            _LOGGER.info("running %d station(s); Ctrl-C stops", len(engine.stations))
            # Runs until stopped; with folders or video files only, until they are read.
            # (Stations that only take pushed pictures or triggers never finish: a service
            # waits for them.)
            waits: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
            if engine.has_finite_sources:
                waits.append(asyncio.create_task(engine.wait_finished()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            _LOGGER.info("stopping")


def cmd_run(args: argparse.Namespace) -> int:
    from .app import with_http, with_ollama

    config = with_ollama(load_config(args.config), args.ollama, args.vlm_model)
    config = with_http(config, args.http)
    asyncio.run(_run(config, args.mqtt))
    return 0


# -- inspect ---------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from .detect.detector import YoloDetector
    from .frames import decode_image

    detector = YoloDetector(args.model, imgsz=args.imgsz, device=args.device)
    detector.load()
    failures = 0
    for name in args.images:
        path = Path(name)
        try:
            image = decode_image(path.read_bytes(), origin=str(path))
        except (OSError, ImageDecodeError) as exc:
            failures += 1
            message = (
                str(exc) if isinstance(exc, ImageDecodeError) else f"{path}: {exc.strerror or exc}"
            )
            print(f"edge-inspector: error: {message}", file=sys.stderr)
            if args.json:
                print(json.dumps({"image": str(path), "error": message}), flush=True)
            continue
        raw = detector.predict([image], conf=args.conf)[0]
        detections = [
            {
                "class": detector.names.get(int(c), str(int(c))),
                "class_id": int(c),
                "confidence": round(float(p), 4),
                "box": [round(float(v), 1) for v in box],
            }
            for box, p, c in zip(raw.boxes, raw.confidences, raw.class_ids, strict=True)
        ]
        if args.json:
            print(
                json.dumps(
                    {
                        "image": str(path),
                        "width": image.shape[1],
                        "height": image.shape[0],
                        "detections": detections,
                        "inference_ms": round(raw.inference_ms, 2),
                    }
                ),
                flush=True,
            )
        else:
            found = (
                ", ".join(f"{d['class']} {d['confidence']:.2f}" for d in detections) or "nothing"
            )
            print(f"{path}: {found}", flush=True)
    return 1 if failures else 0


# -- demo / train / export / schema ------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.runner import run_demo

    duration = None if args.frames and args.duration is None else (args.duration or 60.0)
    asyncio.run(
        run_demo(
            frames=args.frames,
            duration=duration,
            store=args.store,
            fps=args.fps,
            mqtt=args.mqtt,
            ollama=args.ollama,
            vlm_model=args.vlm_model,
            vlm_grace=args.vlm_wait,
            http=args.http,
        )
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .detect.runtime import prepare_ultralytics, use_threads_for

    prepare_ultralytics()
    from ultralytics import YOLO

    use_threads_for("pytorch")
    model = YOLO(args.model, task="detect")
    model.train(
        data=str(args.data),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        project=str(args.project),
        name=args.name,
        exist_ok=True,
        plots=False,
        amp=args.device != "cpu",
        verbose=True,
    )
    print(f"weights: {Path(args.project) / args.name / 'weights' / 'best.pt'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .detect.runtime import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    if not args.model.exists():
        raise EdgeInspectorError(f"{args.model}: model file not found")
    model = YOLO(str(args.model), task="detect")
    out = model.export(
        format=args.format,
        imgsz=args.imgsz,
        half=args.half,
        int8=args.int8,
        device=args.device,
        verbose=False,
    )
    print(out)
    return 0


def cmd_bench_model(args: argparse.Namespace) -> int:
    from .detect.autoruntime import choose_runtime

    if not args.model.exists():
        raise EdgeInspectorError(f"{args.model}: model file not found")
    if args.imgsz < 32:
        raise ConfigError(f"--imgsz {args.imgsz}: give at least 32")
    if args.stations < 1:
        raise ConfigError(f"--stations {args.stations}: give at least 1")
    choice = choose_runtime(
        args.model.resolve(),
        imgsz=args.imgsz,
        device=args.device,
        fresh=args.fresh,
        stations=args.stations,
    )
    if args.json:
        print(json.dumps(choice.as_json(), indent=2))
    else:
        print(choice.table())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .events import export_schemas

    for path in export_schemas(args.out):
        print(path)
    return 0


def _index_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return Path(args.db)
    if args.config is not None:
        return load_config(args.config).manuals_index
    return Path("edge-inspector-data") / "manuals.sqlite3"


def _embedder(args: argparse.Namespace) -> tuple[object, str | None]:
    if not args.embed_model:
        return None, None
    import ollama

    client = ollama.Client(host=args.ollama)

    def embed(texts: Sequence[str]) -> list[list[float]]:
        try:
            return [
                list(v) for v in client.embed(model=args.embed_model, input=list(texts)).embeddings
            ]
        except (ollama.ResponseError, ConnectionError) as exc:
            raise EdgeInspectorError(f"embedding with {args.embed_model} failed: {exc}") from None

    return embed, args.embed_model


def cmd_manuals_index(args: argparse.Namespace) -> int:
    from .manuals import ManualIndex

    index = ManualIndex(_index_path(args))
    embed, model = _embedder(args)
    report = index.index(args.dir, embed=embed, embed_model=model)  # type: ignore[arg-type]
    for kind in ("added", "updated", "removed"):
        for name in getattr(report, kind):
            print(f"{kind:<9} {name}")
    for name, error in report.failed:
        print(f"failed    {name}: {error}", file=sys.stderr)
    print(
        f"{index.path}: {report.chunks} passages from {len(index.files())} file(s) "
        f"({len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.removed)} removed, {len(report.unchanged)} unchanged, "
        f"{len(report.failed)} failed)"
    )
    return 1 if report.failed else 0


def cmd_manuals_search(args: argparse.Namespace) -> int:
    from .manuals import ManualIndex

    path = _index_path(args)
    if not path.exists():
        raise EdgeInspectorError(f"{path}: no manual index; run `edge-inspector manuals index DIR`")
    index = ManualIndex(path)
    embed, model = _embedder(args)
    vector = embed([args.query])[0] if embed is not None else None  # type: ignore[operator]
    hits = index.search(args.query, limit=args.limit, query_vector=vector, embed_model=model)
    if args.json:
        for hit in hits:
            print(
                json.dumps(
                    {
                        "file": hit.file,
                        "section": hit.section,
                        "page": hit.page,
                        "score": hit.score,
                        "excerpt": hit.excerpt,
                    }
                )
            )
    elif not hits:
        print(f"no passage matches {args.query!r}")
    for rank, hit in enumerate([] if args.json else hits, start=1):
        print(f"{rank}. {hit.reference}  (score {hit.score:g})")
        print(f"   {hit.excerpt}")
    return 0 if hits else 1


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from .dataset import export_dataset

    report = export_dataset(args.store, args.out)
    for reason in report.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    print(
        f"{report.data_yaml}: {report.positives} labelled frame(s) from confirmed incidents, "
        f"{report.backgrounds} background frame(s) from rejected ones"
    )
    return 0


def _eval_out(args: argparse.Namespace) -> Path | None:
    """Where the JSON goes: --out, `-` for stdout (None), else ./vlm-eval-MODEL.json."""
    if args.out == "-":
        return None
    if args.out:
        return Path(args.out)
    model = "".join(c if c.isalnum() or c in "._-" else "-" for c in args.model or "model")
    return Path(f"vlm-eval-{model}.json")


def cmd_vlm_eval(args: argparse.Namespace) -> int:
    from .demo.eval_set import EVAL_SET_DIR
    from .vlm import evaluate as ev
    from .vlm.labelled_set import load_labelled_set

    if not args.verbose:  # the run records what the agent and the guard would log
        for name in ("edge_inspector.vlm", "edge_inspector.tools"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give at least 1 image")
    labelled = load_labelled_set(args.dir or EVAL_SET_DIR)
    config, station = ev.eval_config(
        labelled,
        load_config(args.config) if args.config else None,
        args.station,
        host=args.host,
        model=args.model,
        deadline=args.deadline,
        request_timeout=args.request_timeout,
    )
    out = _eval_out(args)
    table = sys.stdout if out is not None else sys.stderr

    def progress(number: int, total: int, one: ev.ImageResult) -> None:
        said = one.predicted or one.error or one.status
        took = f", {one.seconds:.1f} s" if one.seconds is not None else ""
        print(f"[{number}/{total}] {one.label.file}: {said}{took}", file=sys.stderr, flush=True)

    print(
        f"judging {config.vlm.model} at {config.vlm.host or 'http://127.0.0.1:11434'} on "
        f"{labelled.folder} (actions are a dry run)",
        file=sys.stderr,
        flush=True,
    )
    run = ev.evaluate(labelled, config, station, limit=args.limit, progress=progress)
    report = asyncio.run(run)
    print(ev.format_report(report), file=table, flush=True)
    text = json.dumps(report.as_json(), indent=2)
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        print(f"results: {out}", file=table)
    return 1 if report.aborted else 0


def cmd_vlm_make_set(args: argparse.Namespace) -> int:
    from .demo.eval_set import make_eval_set

    print(make_eval_set(args.dir))
    return 0


# A declarative table of the commands and their options, one statement each: long on purpose.
def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915
    parser = argparse.ArgumentParser(
        prog="edge-inspector", description="Local AI visual inspection."
    )
    parser.add_argument("--version", action="version", version=f"edge-inspector {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "check", help="validate a configuration file, load its models, reach its PLCs"
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument(
        "--no-load", action="store_true", help="only validate the file, do not load models"
    )
    p.add_argument("--no-plc", action="store_true", help="do not connect to the stations' PLCs")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run every station of a configuration until stopped")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--mqtt", metavar="URL", help="broker: mqtt://[user:pass@]host:port, mqtts://")
    p.add_argument("--ollama", metavar="URL", help="Ollama server for the VLM (vlm.host)")
    p.add_argument("--vlm-model", metavar="NAME", help="Ollama model for the VLM (vlm.model)")
    p.add_argument(
        "--http", metavar="PORT", type=int, help="serve the HTTP API on this port (http.port)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="detect objects in image files, one result per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument("--conf", type=float, default=0.25, help="minimum confidence (default 0.25)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="run the offline demo (synthetic conveyor, bundled model)")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default 60)")
    p.add_argument("--fps", type=float, help="frames per second (0: as fast as possible)")
    p.add_argument("--mqtt", metavar="URL", help="also publish to this broker (mqtt://, mqtts://)")
    p.add_argument(
        "--ollama", metavar="URL", help="enrich incidents with the VLM on this Ollama server"
    )
    p.add_argument("--vlm-model", metavar="NAME", help="Ollama model (default qwen2.5vl:7b)")
    p.add_argument(
        "--vlm-wait",
        metavar="SECONDS",
        type=float,
        default=120.0,
        help="at the end, wait this long for the model's last answers (default 120)",
    )
    p.add_argument(
        "--http", metavar="PORT", type=int, help="serve the HTTP API (loopback) on this port"
    )
    p.add_argument(
        "--store",
        type=Path,
        default=Path("edge-inspector-demo"),
        help="where history and images go (default ./edge-inspector-demo)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a detection model on your own YOLO dataset")
    p.add_argument("--data", type=Path, required=True, help="dataset yaml (Ultralytics format)")
    p.add_argument(
        "--model", default="yolo11n.yaml", help="a model yaml (from scratch) or .pt to fine-tune"
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--project", type=Path, default=Path("runs"))
    p.add_argument("--name", default="train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a model for ONNX Runtime, OpenVINO or TensorRT")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument(
        "--format", default="onnx", choices=["onnx", "openvino", "engine", "torchscript"]
    )
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--half", action="store_true")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "bench-model",
        help="time a model on each runtime installed (exports cached); print which runs it",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=".pt (or an exported model)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fresh", action="store_true", help="time again instead of the cached table")
    p.add_argument(
        "--stations",
        type=int,
        default=1,
        help="stations sharing the model: for 4 or more, the fastest per frame in a batch wins "
        "where batches pay (default 1: the fastest single frame)",
    )
    p.add_argument("--json", action="store_true", help="the table as one JSON object")
    p.set_defaults(func=cmd_bench_model)

    p = sub.add_parser("schema", help="write the JSON Schema of the published events")
    p.add_argument("--out", type=Path, default=Path("schema"))
    p.set_defaults(func=cmd_schema)

    dataset = sub.add_parser("dataset", help="turn operators' verdicts into a dataset")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    p = dsub.add_parser("export", help="confirmed and rejected incidents as a YOLO dataset")
    p.add_argument("--store", type=Path, default=Path("edge-inspector-data"))
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_dataset_export)

    manuals = sub.add_parser("manuals", help="index and search the equipment manuals")
    msub = manuals.add_subparsers(dest="manuals_command", required=True)
    for name, helptext in (
        ("index", "index a folder of manuals (incremental by file hash)"),
        ("search", "print the best passages for a query"),
    ):
        p = msub.add_parser(name, help=helptext)
        if name == "index":
            p.add_argument("dir", type=Path, metavar="DIR")
            p.set_defaults(func=cmd_manuals_index)
        else:
            p.add_argument("query", metavar="QUERY")
            p.add_argument("-n", "--limit", type=int, default=5)
            p.add_argument("--json", action="store_true", help="one JSON object per hit")
            p.set_defaults(func=cmd_manuals_search)
        p.add_argument("--db", type=Path, help="index file (default: the store's manuals.sqlite3)")
        p.add_argument("-c", "--config", type=Path, help="take the index path from a config")
        p.add_argument("--embed-model", help="Ollama embedding model for hybrid ranking")
        p.add_argument("--ollama", metavar="URL", help="Ollama server for --embed-model")

    vlm = sub.add_parser("vlm", help="judge a VLM model on labelled incident images")
    vsub = vlm.add_subparsers(dest="vlm_command", required=True)
    p = vsub.add_parser(
        "eval", help="run the VLM stage over a labelled set and score it (actions: dry run)"
    )
    p.add_argument(
        "dir", nargs="?", type=Path, metavar="DIR", help="labelled set (default: the demo's)"
    )
    p.add_argument("--host", metavar="URL", help="Ollama server (default: vlm.host)")
    p.add_argument("--model", metavar="NAME", help="Ollama model (default: vlm.model)")
    p.add_argument(
        "-c", "--config", type=Path, help="station, VLM settings, actions, manuals (default: demo)"
    )
    p.add_argument("--station", metavar="ID", help="the configuration's station to judge as")
    p.add_argument(
        "--out", metavar="FILE", help="JSON results (default ./vlm-eval-MODEL.json; - stdout)"
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    p.add_argument("--deadline", type=float, metavar="S", help="seconds per image (vlm.deadline)")
    p.add_argument(
        "--request-timeout", type=float, metavar="S", help="seconds silent (vlm.request_timeout)"
    )
    p.set_defaults(func=cmd_vlm_eval)
    p = vsub.add_parser("make-set", help="write the demo's labelled set into a folder")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(func=cmd_vlm_make_set)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"edge-inspector: {exc}", file=sys.stderr)
        return 2
    except EdgeInspectorError as exc:
        print(f"edge-inspector: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
