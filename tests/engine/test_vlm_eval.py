"""`edge-inspector vlm eval`: the VLM stage over a labelled set, scored.

The figures are checked against a scripted Ollama whose answers are known (one right, one
wrong, a false alarm disputed, a true defect disputed, invalid JSON, good and bad tool calls);
the command as a user runs it (a real process); bad input; and once with the real small model.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web

from edge_inspector.config import load_config
from edge_inspector.demo.eval_set import EVAL_SET_DIR
from edge_inspector.demo.runner import percentile
from edge_inspector.vlm.evaluate import (
    DRY_RUN_ANSWER,
    EvalReport,
    eval_config,
    evaluate,
    format_report,
)
from edge_inspector.vlm.labelled_set import LabelledSetError, load_labelled_set
from tests.ollama_server import DEFAULT_MODEL, FakeOllama, Reply
from tests.real_ollama import SMALL_MODEL

CLI = [sys.executable, "-m", "edge_inspector.cli"]


def classification(defect: str, severity: str = "medium") -> Reply:
    return Reply.json(
        {
            "defect_type": defect,
            "severity": severity,
            "confidence": 0.8,
            "description": f"looks like {defect}",
        }
    )


REPORT = {
    "summary": "A scratch on the plate.",
    "probable_cause": "Worn guide rail liner.",
    "fix_steps": ["Replace the guide rail liner GR-7"],
}


def script_five(ollama: FakeOllama) -> None:
    """Answers for the shipped set's first five images: 01 scratch, 02 clean (detector: spot),
    03 dent, 04 crack, 05 spot."""
    ollama.queue(
        # 01 scratch: right; three valid tool calls, one of them a (dry-run) action
        classification("scratch", "medium"),
        Reply.tools(("search_manual", {"query": "scratch"})),
        Reply.tools(("write_incident_report", REPORT), ("divert_part", {"bin": "reject"})),
        Reply(content="Done."),
        # 02 clean: the model disputes the false alarm, then writes two calls in broken JSON
        # the agent does not read as calls (as qwen2.5-coder:1.5b does)
        classification("no_defect", "low"),
        Reply(
            content='{"write_incident_report": '
            + json.dumps(REPORT)
            + ', {"alert_operator": {"message": "look", "severity": "low"}}'
        ),
        # 03 dent: called a crack; a tool that was not offered, a report without its fields,
        # then a valid call written as text
        classification("crack", "high"),
        Reply.tools(("explode_line", {}), ("write_incident_report", {"summary": "x"})),
        Reply(
            content='<tool_call>{"name": "search_manual", "arguments": {"query": "dent"}}'
            "</tool_call>"
        ),
        Reply(content="Done."),
        # 04 crack: no valid JSON, twice
        Reply(content="It is a crack, I think."),
        Reply(content="{not json"),
        # 05 spot: invalid first, then valid but a wrong dispute of a true defect
        Reply.json({"defect_type": "spot"}),
        classification("no_defect", "low"),
        Reply(content="Nothing to do."),
    )


async def run_five(ollama: FakeOllama) -> EvalReport:
    labelled = load_labelled_set(EVAL_SET_DIR)
    config, station = eval_config(labelled, None, host=ollama.url, model=DEFAULT_MODEL)
    return await evaluate(labelled, config, station, limit=5)


async def test_every_figure_comes_from_the_models_answers(ollama: FakeOllama) -> None:
    script_five(ollama)
    report = await run_five(ollama)
    m = report.metrics

    assert [r.predicted for r in report.results] == ["scratch", "none", "crack", None, "none"]
    assert {k: (v.count, v.total) for k, v in m.accuracy.items()} == {
        "scratch": (1, 1),
        "dent": (0, 1),
        "crack": (0, 1),
        "spot": (0, 1),
        "none": (1, 1),
    }
    assert (m.overall.count, m.overall.total) == (2, 5)
    assert m.confusion["dent"] == {"crack": 1}
    assert m.confusion["crack"] == {"no_answer": 1}
    assert (m.false_alarms_removed.count, m.false_alarms_removed.total) == (1, 1)
    assert (m.defects_disputed.count, m.defects_disputed.total) == (1, 4)
    # severity over the defects the model called a defect: 01 right, 03 high for medium
    assert (m.severity.count, m.severity.total) == (1, 2)
    assert (m.severity_within_one.count, m.severity_within_one.total) == (2, 2)
    assert (m.json_first_try.count, m.json_first_try.total) == (3, 5)
    assert (m.json_at_all.count, m.json_at_all.total) == (4, 5)
    assert (m.tool_calls.count, m.tool_calls.total) == (4, 8)
    assert (m.tool_calls_as_text, m.tool_calls_unread) == (3, 2)
    assert {k: (v.count, v.total) for k, v in m.tool_calls_by_tool.items()} == {
        "alert_operator": (0, 1),
        "divert_part": (1, 1),
        "explode_line": (0, 1),
        "search_manual": (2, 2),
        "write_incident_report": (1, 3),
    }
    assert m.statuses == {"done": 4, "invalid": 1}
    assert (m.rounds_mean, m.rounds_max) == (1.6, 3)
    assert (m.reports, m.reports_by_model) == (4, 1)
    seconds = [r.seconds for r in report.results if r.seconds is not None and r.status == "done"]
    assert len(seconds) == 4
    assert m.seconds_p50 == round(percentile(seconds, 50), 2)
    assert m.seconds_p95 == round(percentile(seconds, 95), 2)
    assert (m.detector_right.count, m.detector_right.total) == (4, 4)
    assert (m.agreed_with_detector.count, m.agreed_with_detector.total) == (1, 4)
    agent_counted = [
        (r.result.tool_calls, r.result.invalid_tool_calls) for r in report.results if r.result
    ]
    # the agent counts the same calls, except the one it did not read as a call
    assert agent_counted == [(3, 0), (0, 0), (3, 2), (0, 0), (0, 0)]
    reasons = [c.reason for r in report.results for c in r.tool_calls if not c.valid]
    assert reasons[:2] == ["written in a shape the agent does not read as a call"] * 2
    assert reasons[2] == "not offered"
    assert "probable_cause: required" in str(reasons[3])


async def test_the_model_gets_the_crop_and_frame_and_actions_only_pretend(
    ollama: FakeOllama,
) -> None:
    script_five(ollama)
    report = await run_five(ollama)

    first = ollama.requests[0]["messages"]
    assert len(first[1]["images"]) == 2, "the crop and the annotated frame, as the engine sends"
    assert "scratch (confidence 0.76)" in first[1]["content"]
    divert = report.results[0].result.actions[0]  # type: ignore[union-attr]
    assert (divert.tool, divert.status) == ("divert_part", "executed")
    assert report.dry_run_calls == 1
    told = [m["content"] for r in ollama.requests for m in r["messages"] if m["role"] == "tool"]
    assert f"divert_part: done ({DRY_RUN_ANSWER})" in told, "answered as a real target would"
    assert not any("dry run" in t for t in told), "told it is a dry run, a model acts otherwise"
    assert report.results[0].as_json()["actions"][0]["dry_run"] is True
    assert report.results[0].result.report.manual_refs  # type: ignore[union-attr]
    table = format_report(report)
    assert "DRY RUN" in table
    assert "02-clean.jpg" in table


async def test_a_server_failure_is_that_images_and_the_run_goes_on(ollama: FakeOllama) -> None:
    ollama.queue(
        Reply(status=500, error="runner crashed"),  # 01: no classification
        classification("no_defect", "low"),  # 02: classified, then the tool loop fails
        Reply(status=500, error="runner crashed"),
    )
    labelled = load_labelled_set(EVAL_SET_DIR)
    config, station = eval_config(labelled, None, host=ollama.url, model=DEFAULT_MODEL)
    report = await evaluate(labelled, config, station, limit=2)

    first, second = report.results
    assert (first.status, first.predicted) == ("no_answer", None)
    assert "HTTP 500" in str(first.error)
    assert (second.status, second.predicted) == ("failed", "none"), "its classification counts"
    assert report.metrics.false_alarms_removed.count == 1
    assert report.aborted is None, "the server still answers: the run goes on"


# -- the command, as a user runs it ----------------------------------------------------------


async def run_cli(*args: str, cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_command_scores_writes_json_and_never_runs_an_action(
    ollama: FakeOllama, tmp_path: Path, write_config: Callable[[str], Path], demo_model: Path
) -> None:
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{name}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = write_config(f"""
        stations:
          - id: conveyor_1
            name: Line A
            source: {{type: push}}
            model: {{path: {demo_model}}}
            defects: {{scratch: 0.5, dent: 0.5, crack: 0.5, spot: 0.5}}
        vlm:
          actions:
            - name: divert_part
              description: Push the part into a bin
              parameters: {{properties: {{bin: {{type: string}}}}, required: [bin]}}
              target: {{type: webhook, url: "http://127.0.0.1:{port}/divert"}}
        """)
    # the model is wrong and still the command succeeds: a low score is a result, not an error
    ollama.queue(
        classification("dent", "low"),
        Reply.tools(("divert_part", {"bin": "reject"})),
        Reply(content="Done."),
    )
    try:
        rc, out, err = await run_cli(
            "vlm", "eval", "--host", ollama.url, "--model", DEFAULT_MODEL,
            "--config", str(config), "--limit", "1", cwd=tmp_path,
        )  # fmt: skip
    finally:
        await runner.cleanup()

    assert rc == 0, err
    assert hits == [], "an evaluation must never carry out an action"
    assert "DRY RUN" in out
    assert "[1/1] 01-scratch.jpg: dent" in err
    data = json.loads((tmp_path / f"vlm-eval-{DEFAULT_MODEL.replace(':', '-')}.json").read_text())
    assert data["dry_run"] is True
    assert data["station"]["name"] == "Line A", "the configuration's station"
    assert data["metrics"]["overall_accuracy"] == {"count": 0, "total": 1, "rate": 0.0}
    action = data["results"][0]["actions"][0]
    assert (action["tool"], action["status"], action["dry_run"]) == (
        "divert_part",
        "executed",
        True,
    )
    assert "executed" not in err, "no log line may say an action ran"


async def test_an_unreachable_server_or_a_missing_model_is_a_clear_error(
    ollama: FakeOllama, tmp_path: Path
) -> None:
    await ollama.stop()
    rc, _, err = await run_cli(
        "vlm", "eval", "--host", ollama.url, "--model", DEFAULT_MODEL, cwd=tmp_path
    )
    assert rc == 1
    assert f"Ollama at {ollama.url} is not reachable" in err
    assert not list(tmp_path.glob("*.json"))

    await ollama.start(ollama.port)
    rc, _, err = await run_cli(
        "vlm", "eval", "--host", ollama.url, "--model", "nope:1b", cwd=tmp_path
    )
    assert rc == 1
    assert "model 'nope:1b' is not on the Ollama server" in err


# -- bad input ---------------------------------------------------------------------------------


def _labels(folder: Path, images: list[dict[str, Any]], **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.json").write_text(json.dumps({"images": images, **extra}))


def _entry(file: str, defect: str | None = "scratch", called: str = "scratch") -> dict[str, Any]:
    box = [100, 100, 140, 130]
    return {
        "file": file,
        "defect": defect,
        "detector": {"class": called, "confidence": 0.7, "box": box},
    }


def test_unusable_images_are_skipped_with_their_reason_and_counted(tmp_path: Path) -> None:
    for name in ("good", "clean", "burr", "fatal", "blind", "flipped", "outside"):
        shutil.copy(EVAL_SET_DIR / "01-scratch.jpg", tmp_path / f"{name}.jpg")
    (tmp_path / "corrupt.jpg").write_bytes((EVAL_SET_DIR / "03-dent.jpg").read_bytes()[:2000])
    (tmp_path / "text.jpg").write_text("not an image")

    def called(box: list[float]) -> dict[str, Any]:
        return {"class": "spot", "confidence": 0.5, "box": box}

    _labels(
        tmp_path,
        [
            _entry("good.jpg"),
            _entry("clean.jpg", "none", "spot"),
            _entry("missing.jpg"),
            _entry("corrupt.jpg"),
            _entry("text.jpg"),
            _entry("good.jpg"),
            _entry("burr.jpg", "burr"),
            {**_entry("fatal.jpg"), "severity": "fatal"},
            {"file": "blind.jpg", "defect": "scratch"},
            {**_entry("flipped.jpg"), "detector": called([90, 90, 50, 50])},
            {**_entry("outside.jpg"), "detector": called([700, 9, 720, 20])},
        ],
        station={"defects": ["scratch", "dent", "crack", "spot"]},
    )
    labelled = load_labelled_set(tmp_path)
    _, station = eval_config(labelled, None)
    usable = labelled.for_station(station)

    assert [i.file for i in usable.images] == ["good.jpg", "clean.jpg"]
    assert usable.images[1].defect is None
    assert len(usable.skipped) == 9
    reasons = {s.file: s.reason for s in usable.skipped}
    assert reasons["missing.jpg"] == "no such file"
    assert "truncated JPEG" in reasons["corrupt.jpg"]
    assert "not a readable image" in reasons["text.jpg"]
    assert reasons["good.jpg"] == "listed twice"
    assert reasons["burr.jpg"].startswith("unknown class 'burr' (station eval knows: scratch")
    assert reasons["fatal.jpg"].startswith("bad label: severity: Input should be")
    assert reasons["blind.jpg"] == "bad label: detector: Field required"
    assert "box must be [x1, y1, x2, y2]" in reasons["flipped.jpg"]
    assert "outside the 640x480 image" in reasons["outside.jpg"]


def test_a_set_without_labels_or_usable_images_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelledSetError, match="no such folder"):
        load_labelled_set(tmp_path / "nowhere")
    with pytest.raises(LabelledSetError, match=r"no labels\.json"):
        load_labelled_set(tmp_path)
    (tmp_path / "labels.json").write_text('{"images": [\n  {"file": ')
    with pytest.raises(LabelledSetError, match=r"labels\.json:2:\d+: not valid JSON"):
        load_labelled_set(tmp_path)
    _labels(tmp_path, [_entry("missing.jpg")])
    with pytest.raises(
        LabelledSetError, match=r"no usable labelled image.*missing\.jpg: no such file"
    ):
        load_labelled_set(tmp_path)


async def test_the_command_exits_2_on_a_bad_set(tmp_path: Path) -> None:
    rc, _, err = await run_cli("vlm", "eval", str(tmp_path), cwd=tmp_path)
    assert rc == 2
    assert "no labels.json" in err


def test_labels_may_be_yaml_and_a_configuration_names_the_station(
    tmp_path: Path, write_config: Callable[[str], Path], demo_model: Path
) -> None:
    shutil.copy(EVAL_SET_DIR / "01-scratch.jpg", tmp_path / "a.jpg")
    (tmp_path / "labels.yaml").write_text(
        textwrap.dedent("""\
        station: {id: press}
        images:
          - {file: a.jpg, defect: burr, severity: high,
             detector: {class: burr, confidence: 0.9, box: [100, 100, 150, 150]}}
        """)
    )
    config = load_config(
        write_config(f"""
        stations:
          - {{id: gate, name: Gate, source: {{type: push}}, model: {{path: {demo_model}}},
             defects: {{scratch: 0.5}}}}
          - {{id: press, name: Press, source: {{type: push}}, model: {{path: {demo_model}}},
             defects: {{burr: 0.5}}}}
        """)
    )
    labelled = load_labelled_set(tmp_path)
    _, station = eval_config(labelled, config)
    assert station.name == "Press", "the station the labels name"
    assert labelled.for_station(station).images[0].severity == "high"
    _, gate = eval_config(labelled, config, "gate")
    with pytest.raises(LabelledSetError, match="unknown class 'burr'"):
        labelled.for_station(gate)


# -- the shipped set ---------------------------------------------------------------------------


def test_the_shipped_set_loads_and_is_what_its_generator_makes(tmp_path: Path) -> None:
    labelled = load_labelled_set(EVAL_SET_DIR)
    assert not labelled.skipped
    truths = [i.truth for i in labelled.images]
    assert {t: truths.count(t) for t in set(truths)} == {
        "scratch": 3, "dent": 3, "crack": 3, "spot": 3, "none": 4
    }  # fmt: skip
    assert sum(i.detector.class_name != i.defect for i in labelled.images if i.defect) == 2
    assert sum(p.stat().st_size for p in EVAL_SET_DIR.iterdir()) < 600_000

    made = subprocess.run(
        [*CLI, "vlm", "make-set", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(tmp_path / "labels.json")
    assert (tmp_path / "labels.json").read_text() == (EVAL_SET_DIR / "labels.json").read_text()
    for image in labelled.images:
        shipped = cv2.imread(str(EVAL_SET_DIR / image.file)).astype(np.int16)
        made = cv2.imread(str(tmp_path / image.file)).astype(np.int16)
        assert float(np.abs(shipped - made).mean()) < 1.0, f"{image.file} differs"


# -- the real model ----------------------------------------------------------------------------


async def test_the_real_small_model_on_two_images(real_ollama: str, tmp_path: Path) -> None:
    """The shape of a real run (the small model's figures are what they are)."""
    started = time.monotonic()
    rc, out, err = await run_cli(
        "vlm", "eval", "--host", real_ollama, "--model", SMALL_MODEL, "--limit", "2",
        "--out", "-", "--request-timeout", "240", "--deadline", "240", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert rc == 0, err
    data = json.loads(out)
    took = time.monotonic() - started
    assert data["model"] == SMALL_MODEL
    assert data["vision"] is False, "qwen2.5-coder has no vision: judged from the detector's call"
    assert [r["file"] for r in data["results"]] == ["01-scratch.jpg", "02-clean.jpg"]
    for result in data["results"]:
        assert result["status"] in ("done", "invalid", "failed", "no_answer")
        assert result["classification_attempts"], "the model was asked to classify"
    metrics = data["metrics"]
    assert set(metrics["accuracy"]) == {"scratch", "none"}
    assert metrics["valid_json_at_all"]["total"] == 2
    assert "VLM evaluation of qwen2.5-coder:0.5b" in err
    print(f"real {SMALL_MODEL} on 2 images: {took:.0f} s; {metrics}")
