"""`edge-inspector dataset export`: operators' verdicts become a labelled YOLO dataset.

Confirmed incidents give their camera frame (as the camera gave it, not the annotated one) with
the incident's defect boxes as labels; rejected incidents (false alarms) give their frame with
an empty label file, a background image that teaches the model what is not a defect. Class ids
are the detection model's own, so `edge-inspector train --model best.pt --data data.yaml`
fine-tunes the model the incidents came from.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeInspectorError
from .events import Incident

__all__ = ["ExportReport", "export_dataset"]


@dataclass(frozen=True, slots=True)
class ExportReport:
    positives: int
    backgrounds: int
    skipped: list[str]
    data_yaml: Path


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        return int(width), int(height)


def export_dataset(store: Path, out: Path) -> ExportReport:
    """Write images/, labels/ and data.yaml under `out` from the history in `store`."""
    db_path = store / "history.sqlite3"
    if not db_path.exists():
        raise EdgeInspectorError(f"{store}: no history.sqlite3 (is this a store folder?)")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT payload FROM incidents WHERE state IN ('confirmed', 'rejected') ORDER BY ts"
        ).fetchall()
    finally:
        db.close()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    positives = backgrounds = 0
    skipped: list[str] = []
    for (payload,) in rows:
        incident = Incident.model_validate_json(payload)
        if incident.extra.get("missed"):
            skipped.append(f"{incident.incident_id}: a missed defect has no boxes")
            continue
        raw = store / "images" / incident.raw_path if incident.raw_path else None  # relative
        if raw is None or not raw.is_file():
            skipped.append(f"{incident.incident_id}: no camera frame kept (or removed)")
            continue
        width, height = _size(raw)
        stem = incident.incident_id
        shutil.copyfile(raw, out / "images" / f"{stem}.jpg")
        lines = []
        if incident.state == "confirmed":
            for det in incident.detections:
                if not det.defect:
                    continue
                names[det.class_id] = det.class_name
                b = det.box
                cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
                w, h = (b.x2 - b.x1) / width, (b.y2 - b.y1) / height
                lines.append(f"{det.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            positives += 1
        else:
            backgrounds += 1
        (out / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    count = max(names, default=-1) + 1
    all_names = {i: names.get(i, f"class_{i}") for i in range(count)}
    data_yaml = out / "data.yaml"
    data_yaml.write_text(
        f"# exported by edge-inspector from {store}\n"
        f"path: {out.resolve()}\ntrain: images\nval: images\n"
        f"names: {json.dumps(all_names)}\n"
    )
    return ExportReport(positives, backgrounds, skipped, data_yaml)
