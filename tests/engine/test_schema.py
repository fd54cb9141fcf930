"""The committed JSON Schema matches the models, and real events validate against it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from edge_inspector.events import (
    BoundingBox,
    Detection,
    Incident,
    InspectionResult,
    Latency,
    ModelInfo,
    StationState,
    Verdict,
    export_schemas,
)

COMMITTED = Path(__file__).parents[2] / "edge_inspector" / "schema"


def test_committed_schemas_are_up_to_date(tmp_path: Path) -> None:
    for path in export_schemas(tmp_path):
        committed = COMMITTED / path.name
        assert committed.is_file(), f"{committed} is missing: run `make schema`"
        assert json.loads(committed.read_text()) == json.loads(path.read_text()), (
            f"{committed.name} is stale: run `make schema`"
        )


def _validate(name: str, payload: str) -> None:
    schema = json.loads((COMMITTED / f"{name}.schema.json").read_text())
    jsonschema.validate(json.loads(payload), schema)


def test_events_validate_against_the_committed_schema() -> None:
    model = ModelInfo(name="m.pt", sha256="ab" * 32)
    det = Detection(
        class_name="dent",
        class_id=1,
        confidence=0.8,
        box=BoundingBox(x1=1, y1=2, x2=3, y2=4),
        track_id=7,
        defect=True,
    )
    now = datetime.now(UTC)
    result = InspectionResult(
        inspection_id="i1",
        station_id="s",
        timestamp=now,
        frame_seq=1,
        verdict=Verdict.FAIL,
        detections=(det,),
        image_width=640,
        image_height=480,
        model=model,
        latency=Latency(
            queue_ms=1, preprocess_ms=1, inference_ms=9, postprocess_ms=1, rules_ms=0.2, total_ms=13
        ),
    )
    incident = Incident(
        incident_id="x",
        station_id="s",
        station_name="S",
        created_at=now,
        inspection_id="i1",
        defect_class="dent",
        confidence=0.8,
        boxes=(det.box,),
        detections=(det,),
        model=model,
        latency_ms=13,
    )
    state = StationState(
        station_id="s", name="S", enabled=True, available=True, mode="continuous", updated_at=now
    )
    _validate("inspection", result.model_dump_json())
    _validate("incident", incident.model_dump_json())
    _validate("station_state", state.model_dump_json())
    bad = json.loads(incident.model_dump_json())
    bad["confidence"] = 3
    try:
        jsonschema.validate(bad, json.loads((COMMITTED / "incident.schema.json").read_text()))
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("an out-of-range confidence passed the schema")
