"""The labelled set `edge-inspector vlm eval` runs by default, made by the demo's renderer.

Sixteen frames of the synthetic conveyor (640x480 JPEGs): each defect class three times, two
of them with the detector's class wrong (a crack it called a scratch, a dent it called a
spot), and four clean frames on which the detector raised a false alarm. Each image's label is
the renderer's ground truth; its severity follows a fixed rule (`severity_of`); the detector's
call is the truth's box moved by a few pixels with a plausible confidence, or, on a clean frame,
a box on a bolt hole (called a spot) or on plain metal (called anything else).

`make_eval_set(folder)` writes it; the copy under `edge_inspector/demo/eval-set/` was written
by it (`edge-inspector vlm make-set edge_inspector/demo/eval-set`), and a test checks that the
two agree. The format is described in `edge_inspector.vlm.labelled_set`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import DEMO_DIR
from .synthetic import ConveyorFrame, GroundTruth, random_scene

__all__ = ["EVAL_SET_DIR", "make_eval_set", "severity_of"]

EVAL_SET_DIR = DEMO_DIR / "eval-set"

_SEED = 20261130
_JPEG_QUALITY = 80
_WIDTH, _HEIGHT = 640, 480
# (true class or None for a clean frame, the class the detector called). Interleaved, so that
# `--limit 2` already has a defect and a false alarm.
_PLAN: tuple[tuple[str | None, str], ...] = (
    ("scratch", "scratch"),
    (None, "spot"),
    ("dent", "dent"),
    ("crack", "crack"),
    ("spot", "spot"),
    (None, "scratch"),
    ("scratch", "scratch"),
    ("crack", "scratch"),
    ("dent", "dent"),
    (None, "dent"),
    ("spot", "spot"),
    ("scratch", "scratch"),
    ("dent", "spot"),
    ("crack", "crack"),
    (None, "spot"),
    ("spot", "spot"),
)
_STATION = {
    "id": "conveyor_1",
    "name": "Conveyor 1",
    "product": "brushed steel plate",
    "line": "demo line",
    "defects": ["scratch", "dent", "crack", "spot"],
}


def severity_of(truth: GroundTruth) -> str:
    """The set's severity rule: a crack is high, a dent medium, a scratch medium when 60 px or
    longer (else low), a spot low."""
    if truth.class_name == "crack":
        return "high"
    if truth.class_name == "dent":
        return "medium"
    if truth.class_name == "scratch":
        x1, y1, x2, y2 = truth.box
        return "medium" if max(x2 - x1, y2 - y1) >= 60 else "low"
    return "low"


def _box(values: tuple[float, float, float, float]) -> list[float]:
    x1, y1, x2, y2 = values
    return [
        round(max(0.0, x1), 1),
        round(max(0.0, y1), 1),
        round(min(float(_WIDTH), x2), 1),
        round(min(float(_HEIGHT), y2), 1),
    ]


def _scene(rng: np.random.Generator, defect: str | None) -> ConveyorFrame:
    """The next scene with exactly that one defect (or none)."""
    while True:
        scene = random_scene(
            rng, width=_WIDTH, height=_HEIGHT, defect_rate=0.0 if defect is None else 0.9
        )
        if defect is None and not scene.truths:
            return scene
        if len(scene.truths) == 1 and scene.truths[0].class_name == defect:
            return scene


def _false_alarm(
    rng: np.random.Generator, scene: ConveyorFrame, called: str
) -> tuple[list[float], str]:
    """Where a detector plausibly errs on a clean part, and what is there: a bolt hole taken
    for a spot, or glare and grain on the metal taken for anything else."""
    gray = cv2.cvtColor(scene.image, cv2.COLOR_BGR2GRAY)
    metal = (gray > 95).astype(np.uint8)
    if called == "spot":
        closed = cv2.morphologyEx(metal, cv2.MORPH_CLOSE, np.ones((41, 41), np.uint8))
        holes = cv2.erode(cv2.subtract(closed, metal), np.ones((3, 3), np.uint8))
        count, _, stats, _ = cv2.connectedComponentsWithStats(holes)
        found = [
            stats[i]
            for i in range(1, count)
            if 40 <= stats[i][cv2.CC_STAT_AREA] <= 1500
            and 0.7 <= stats[i][cv2.CC_STAT_WIDTH] / stats[i][cv2.CC_STAT_HEIGHT] <= 1.4
            and stats[i][cv2.CC_STAT_LEFT] > 0
            and stats[i][cv2.CC_STAT_LEFT] + stats[i][cv2.CC_STAT_WIDTH] < gray.shape[1]
        ]
        if found:
            x, y, w, h, _ = (int(v) for v in found[int(rng.integers(0, len(found)))])
            return _box((x - 3.0, y - 3.0, x + w + 3.0, y + h + 3.0)), "a bolt hole"
    ys, xs = np.nonzero(cv2.erode(metal, np.ones((41, 41), np.uint8)))
    i = int(rng.integers(0, len(xs)))
    half = float(rng.uniform(9, 20))
    cx, cy = float(xs[i]), float(ys[i])
    return _box((cx - half, cy - half * 0.8, cx + half, cy + half * 0.8)), "grain on the metal"


def _render() -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    rng = np.random.default_rng(_SEED)
    files: list[tuple[str, bytes]] = []
    entries: list[dict[str, Any]] = []
    for number, (defect, called) in enumerate(_PLAN, start=1):
        scene = _scene(rng, defect)
        name = f"{number:02d}-{defect or 'clean'}.jpg"
        entry: dict[str, Any] = {"file": name, "defect": defect}
        if defect is None:
            box, what = _false_alarm(rng, scene, called)
            confidence = float(rng.uniform(0.46, 0.62))
            entry["note"] = f"clean part: the detector took {what} for a {called}"
        else:
            truth = scene.truths[0]
            entry["severity"] = severity_of(truth)
            dx1, dy1, dx2, dy2 = (float(d) for d in rng.uniform(-3, 3, 4))
            x1, y1, x2, y2 = truth.box
            box = _box((x1 + dx1, y1 + dy1, x2 + dx2, y2 + dy2))
            confidence = float(rng.uniform(0.55, 0.93))
            if called != defect:
                entry["note"] = f"the detector called this {defect} a {called}"
        entry["detector"] = {"class": called, "confidence": round(confidence, 2), "box": box}
        entries.append(entry)
        ok, buf = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        assert ok
        files.append((name, bytes(buf.tobytes())))
    labels = {
        "description": "Frames of the Edge Inspector demo's synthetic conveyor with their ground "
        "truth (edge_inspector/demo/eval_set.py). Severity: crack high, dent medium, scratch "
        "medium from 60 px (else low), spot low.",
        "station": _STATION,
        "images": entries,
    }
    return files, labels


def make_eval_set(folder: Path) -> Path:
    """Write the set's images and labels.json into `folder`; return the labels file."""
    files, labels = _render()
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (folder / name).write_bytes(data)
    path = folder / "labels.json"
    path.write_text(_dump(labels), encoding="utf-8")
    return path


def _dump(labels: dict[str, Any]) -> str:
    """Indented JSON with each list of plain values on one line (a box reads as a box)."""
    text = json.dumps(labels, indent=2)
    return (
        re.sub(
            r"\[\s*([^\[\]{}]+?)\s*\]",
            lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
            text,
        )
        + "\n"
    )
