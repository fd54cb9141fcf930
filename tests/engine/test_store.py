"""The SQLite history: writes, queries, and retention by age and by size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_inspector.config import RetentionConfig
from edge_inspector.events import (
    BoundingBox,
    Detection,
    Incident,
    IncidentState,
    InspectionResult,
    Latency,
    ModelInfo,
    Verdict,
)
from edge_inspector.store import Store

MODEL = ModelInfo(name="m.pt", sha256="0" * 64)
T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def _incident(n: int, cls: str, when: datetime, station: str = "s1") -> Incident:
    box = BoundingBox(x1=1, y1=2, x2=30, y2=40)
    det = Detection(class_name=cls, class_id=0, confidence=0.9, box=box, defect=True)
    return Incident(
        incident_id=f"inc{n}",
        station_id=station,
        station_name=station,
        created_at=when,
        inspection_id=f"insp{n}",
        defect_class=cls,
        confidence=0.9,
        boxes=(box,),
        detections=(det,),
        model=MODEL,
        latency_ms=12.0,
        part_id=f"P{n}",
    )


def _inspection(n: int, verdict: Verdict, when: datetime, station: str = "s1") -> InspectionResult:
    return InspectionResult(
        inspection_id=f"insp{n}",
        station_id=station,
        timestamp=when,
        frame_seq=n,
        verdict=verdict,
        detections=(),
        image_width=640,
        image_height=480,
        model=MODEL,
        latency=Latency(
            queue_ms=0,
            preprocess_ms=1,
            inference_ms=10,
            postprocess_ms=1,
            rules_ms=0.1,
            total_ms=12.5,
        ),
    )


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    clock = [T0.timestamp()]
    s = Store(
        tmp_path / "store",
        RetentionConfig(max_age_days=7, max_images_mb=0.01),
        clock=lambda: clock[0],
        flush_rows=1000,
    )
    s.clock = clock  # type: ignore[attr-defined]
    await s.open()
    yield s  # type: ignore[misc]
    await s.close()


async def test_incidents_are_queried_by_id_station_time_and_class(store: Store) -> None:
    for n, (cls, minutes, station) in enumerate(
        [("scratch", 0, "s1"), ("dent", 10, "s1"), ("scratch", 20, "s1"), ("scratch", 30, "s2")]
    ):
        await store.add_incident(_incident(n, cls, T0 + timedelta(minutes=minutes), station))
    assert (await store.incident("inc1")).defect_class == "dent"  # type: ignore[union-attr]
    assert await store.incident("nope") is None
    assert (await store.last_incident("s1")).incident_id == "inc2"  # type: ignore[union-attr]
    assert [i.incident_id for i in await store.incidents(station_id="s1")] == [
        "inc2",
        "inc1",
        "inc0",
    ]
    assert [i.incident_id for i in await store.incidents(limit=2, offset=1)] == ["inc2", "inc1"]
    counts = await store.counts_by_class(station_id="s1")
    assert [(c.defect_class, c.count) for c in counts] == [("scratch", 2), ("dent", 1)]
    window = await store.counts_by_class(
        since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=25)
    )
    assert [(c.defect_class, c.count) for c in window] == [("dent", 1), ("scratch", 1)]


async def test_incident_state_changes_are_kept(store: Store) -> None:
    await store.add_incident(_incident(1, "dent", T0))
    updated = await store.set_incident_state("inc1", IncidentState.ACKNOWLEDGED)
    assert updated is not None
    assert updated.state == "acknowledged"
    assert (await store.incident("inc1")).state == "acknowledged"  # type: ignore[union-attr]
    assert await store.set_incident_state("missing", IncidentState.ACKNOWLEDGED) is None


async def test_inspections_are_buffered_but_queries_see_them(store: Store) -> None:
    for n in range(10):
        await store.add_inspection(
            _inspection(n, Verdict.FAIL if n % 4 == 0 else Verdict.PASS, T0 + timedelta(seconds=n))
        )
    counts = await store.inspection_counts(station_id="s1")
    assert (counts.inspections, counts.failed) == (10, 3)
    failing = await store.inspection("insp4")
    assert failing is not None
    assert failing.verdict == "fail"
    assert await store.inspection("insp1") is None  # passing inspections keep no full record


async def test_inspections_survive_a_restart(tmp_path: Path) -> None:
    first = Store(tmp_path / "s")
    await first.open()
    await first.add_inspection(_inspection(1, Verdict.PASS, T0))
    await first.close()  # flushes the buffer
    second = Store(tmp_path / "s")
    await second.open()
    assert (await second.inspection_counts()).inspections == 1
    await second.close()


async def test_retention_deletes_old_history_and_their_images(store: Store) -> None:
    old, new = T0 - timedelta(days=8), T0 - timedelta(days=1)
    await store.add_incident(_incident(1, "dent", old))
    await store.add_incident(_incident(2, "dent", new))
    await store.add_inspection(_inspection(1, Verdict.FAIL, old))
    await store.add_inspection(_inspection(2, Verdict.PASS, new))
    old_image = await store.save_image("inc1", "s1/old.jpg", b"x" * 100, old)
    report = await store.apply_retention()
    assert (report.incidents_deleted, report.inspections_deleted, report.images_deleted) == (
        1,
        1,
        1,
    )
    assert not (store.images_dir / old_image).exists()
    assert await store.incident("inc1") is None
    assert await store.incident("inc2") is not None


async def test_retention_by_size_deletes_the_oldest_images_first(store: Store) -> None:
    # The limit is 0.01 MB = 10 485 bytes; four images of 4 000 bytes need one... two deleted.
    await store.add_incident(_incident(1, "dent", T0).model_copy(update={"frame_path": None}))
    paths = []
    for n in range(4):
        when = T0 - timedelta(hours=4 - n)
        paths.append(await store.save_image("inc1", f"s1/{n}.jpg", bytes(4000), when))
    await store.add_incident(_incident(1, "dent", T0).model_copy(update={"frame_path": paths[0]}))
    report = await store.apply_retention()
    assert report.images_deleted == 2
    assert [(store.images_dir / p).exists() for p in paths] == [False, False, True, True]
    assert await store.image_bytes() == 8000
    incident = await store.incident("inc1")
    assert incident is not None
    assert incident.frame_path is None  # no dangling path


async def test_an_image_path_cannot_escape_the_store(store: Store) -> None:
    from edge_inspector.errors import StoreError

    with pytest.raises(StoreError, match="outside the image folder"):
        await store.save_image("x", "../../etc/evil.jpg", b"x", T0)


async def test_rate_series_buckets_inspections_and_incidents_per_station(store: Store) -> None:
    # Bucket 0 (06:00-06:15): 3 inspections, 1 failed, 1 incident; bucket 1 empty;
    # bucket 2 (06:30-06:45): 2 inspections, 2 failed, 2 incidents; another station ignored.
    for n, verdict, minute in [(1, "pass", 1), (2, "fail", 5), (3, "pass", 14)]:
        await store.add_inspection(_inspection(n, Verdict(verdict), T0 + timedelta(minutes=minute)))
    for n, minute in [(4, 31), (5, 44)]:
        await store.add_inspection(_inspection(n, Verdict.FAIL, T0 + timedelta(minutes=minute)))
    await store.add_inspection(_inspection(6, Verdict.FAIL, T0 + timedelta(minutes=2), "s2"))
    await store.add_incident(_incident(1, "scratch", T0 + timedelta(minutes=5)))
    await store.add_incident(_incident(2, "dent", T0 + timedelta(minutes=31)))
    await store.add_incident(_incident(3, "dent", T0 + timedelta(minutes=44)))
    series = await store.rate_series(
        station_id="s1", since=T0, until=T0 + timedelta(minutes=50), bucket=900
    )
    assert [b.start for b in series] == [T0 + timedelta(minutes=15 * i) for i in range(4)]
    assert [(b.inspections, b.failed, b.incidents) for b in series] == [
        (3, 1, 1),
        (0, 0, 0),
        (2, 2, 2),
        (0, 0, 0),
    ]
    assert series[0].defect_rate == pytest.approx(1 / 3)
    assert series[1].defect_rate == 0.0
    everywhere = await store.rate_series(
        station_id=None, since=T0, until=T0 + timedelta(minutes=14), bucket=900
    )
    assert [(b.inspections, b.failed) for b in everywhere] == [(3, 2)]  # 06:14 is `until`
    assert await store.rate_series(station_id="s1", since=T0, until=T0, bucket=900) == []


async def test_a_query_after_the_store_closed_is_a_store_error(tmp_path: Path) -> None:
    """A late caller (a notification answered while the integration unloads) gets the engine's
    own error, which its callers handle, not the executor's RuntimeError."""
    from edge_inspector.errors import StoreError

    store = Store(tmp_path / "store")
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.inspection_counts(station_id="press")
