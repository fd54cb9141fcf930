"""The engine end to end with the real demo model: frames in, results and incidents out."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from edge_inspector.config import EngineConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.errors import EdgeInspectorError, StationNotFoundError
from edge_inspector.events import Incident, InspectionResult, StationState
from edge_inspector.sinks import EventSink
from tests.camera_server import camera
from tests.conftest import jpeg
from tests.waiting import until


class Recorder(EventSink):
    """A sink that keeps everything, and checks each incident is in the store when it arrives."""

    def __init__(self, engine_ref: list[Engine] | None = None) -> None:
        self.inspections: list[InspectionResult] = []
        self.incidents: list[Incident] = []
        self.states: list[StationState] = []
        self.stored_before_told: list[bool] = []
        self._engine_ref = engine_ref or []

    async def on_inspection(self, result: InspectionResult) -> None:
        self.inspections.append(result)

    async def on_incident(self, incident: Incident) -> None:
        if self._engine_ref:
            self.stored_before_told.append(
                await self._engine_ref[0].store.incident(incident.incident_id) is not None
            )
        self.incidents.append(incident)

    async def on_station_state(self, state: StationState) -> None:
        self.states.append(state)


def _write_frames(folder: Path, frames: list[ConveyorFrame]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame.image)


async def _run_until_finished(config: EngineConfig, sink: Recorder) -> Engine:
    engine = Engine(config, sinks=[sink])
    sink._engine_ref.append(engine)
    async with engine:
        await asyncio.wait_for(engine.wait_finished(), 120)
    return engine


async def test_recorded_conveyor_gives_one_incident_per_defect_with_the_right_class(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    conveyor_frames: Callable[[int, int], list[ConveyorFrame]],
) -> None:
    frames = conveyor_frames(150, 11)
    _write_frames(tmp_path / "frames", frames)
    config = make_config(f"""
        - id: belt
          name: Belt
          source: {{type: folder, path: {tmp_path / "frames"}}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {{scratch: 0.45, dent: 0.45, crack: 0.45, spot: 0.45}}
          fps: null
          debounce: {{n: 2, m: 3}}
    """)
    sink = Recorder()
    engine = await _run_until_finished(config, sink)

    # Ground truth: the distinct defects that stay in view for at least 3 frames.
    seen = Counter(t.key for f in frames for t in f.truths)
    classes = {t.key: t.class_name for f in frames for t in f.truths}
    distinct = {k for k, n in seen.items() if n >= 3}
    assert len(sink.inspections) == 150
    assert len(distinct) >= 5, "the recording should hold several defects"
    frames_with_defects = sum(1 for f in frames if f.truths)
    # One incident per defect, not one per frame it was seen on.
    assert len(distinct) * 0.7 <= len(sink.incidents) <= len(distinct) * 1.5, (
        f"{len(sink.incidents)} incidents for {len(distinct)} defects "
        f"seen on {frames_with_defects} frames"
    )
    assert Counter(i.defect_class for i in sink.incidents).keys() <= set(classes.values())
    # Verdicts agree with the ground truth on most frames.
    agree = sum(
        (r.verdict == "fail") == bool(f.truths)
        for r, f in zip(sink.inspections, frames, strict=True)
    )
    assert agree >= 0.85 * len(frames)
    for incident in sink.incidents:
        for stored in (incident.frame_path, incident.crop_path, incident.raw_path):
            assert stored and not Path(stored).is_absolute()  # relative to the store's images
            assert engine.store.image_file(stored) is not None
        assert incident.track_id is not None
        assert incident.model.name == "demo-defects.pt"
        assert len(incident.model.sha256) == 64


async def _run_belt(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    sink: Recorder,
) -> Engine:
    """A belt station on a folder of the defect scenes, each three times, run to the end."""
    _write_frames(tmp_path / "frames", [s for s in defect_scenes for _ in range(3)])
    config = make_config(f"""
        - id: belt
          name: Belt
          source: {{type: folder, path: {tmp_path / "frames"}}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
          fps: null
    """)
    return await _run_until_finished(config, sink)


async def test_an_incident_is_stored_before_any_sink_hears_of_it(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
) -> None:
    sink = Recorder()
    engine = await _run_belt(tmp_path, make_config, defect_scenes, sink)
    assert sink.incidents
    assert all(sink.stored_before_told)
    assert engine.stations["belt"].incidents == len(sink.incidents)


async def test_a_cpu_models_incident_pictures_are_made_between_its_batches(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Drawn and encoded beside a CPU model, they took a core from its thread team and slowed the
    # frames in flight (p99); on the model's own thread they wait for the batch to end.
    from edge_inspector import station as station_module

    threads: list[str] = []
    encode = station_module.encode_jpeg

    def recorded(image: object, quality: int = 85) -> bytes:
        threads.append(threading.current_thread().name)
        return encode(image, quality)  # type: ignore[arg-type]

    monkeypatch.setattr(station_module, "encode_jpeg", recorded)
    sink = Recorder()
    engine = await _run_belt(tmp_path, make_config, defect_scenes, sink)
    assert engine.stations["belt"].incidents and sink.incidents
    assert all(i.frame_path and i.crop_path and i.raw_path for i in sink.incidents)
    assert threads and all(name.startswith("edge_inspector_yolo") for name in threads), threads
    # on a GPU the model leaves the cores free: its thread is kept for the next batch
    queue = engine.stations["belt"]._inference
    assert queue.cpu_thread is not None
    monkeypatch.setattr(queue.detector, "device", "cuda:0")
    assert queue.cpu_thread is None


async def test_stations_sharing_a_model_are_batched(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    conveyor_frames: Callable[[int, int], list[ConveyorFrame]],
) -> None:
    _write_frames(tmp_path / "frames", conveyor_frames(20, 3))
    station = """
        - id: cam{n}
          name: Camera {n}
          source: {{type: folder, path: {path}}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {{scratch: 0.5}}
          fps: null
    """
    config = make_config(
        *(station.format(n=n, path=tmp_path / "frames") for n in range(4)),
        extra="detection: {max_batch: 4, batch_window_ms: 50}\n",
    )
    sink = Recorder()
    engine = Engine(config, sinks=[sink])
    async with engine:
        queue = next(iter(engine._inference.values()))
        await asyncio.wait_for(engine.wait_finished(), 120)
        batches, frames = queue.batches, queue.frames
    assert frames == 80
    assert batches <= 40, f"{frames} frames took {batches} model calls: not batched"
    assert max(r.latency.batch_size for r in sink.inspections) >= 3


async def test_a_dead_camera_does_not_stop_the_others_and_recovers(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
) -> None:
    _write_frames(tmp_path / "frames", defect_scenes[:4])
    async with camera() as cam:
        cam.down = True
        config = make_config(f"""
            - id: good
              name: Good
              source: {{type: folder, path: {tmp_path / "frames"}, loop: true}}
              model: {{path: MODEL, imgsz: 320}}
              defects: {{scratch: 0.5}}
              fps: 20
            - id: flaky
              name: Flaky
              source: {{type: http_snapshot, url: "{cam.url}/snapshot.jpg", timeout: 2}}
              model: {{path: MODEL, imgsz: 320}}
              defects: {{scratch: 0.5}}
              fps: 20
        """)
        sink = Recorder()
        async with Engine(config, sinks=[sink]) as engine:
            good, flaky = engine.stations["good"], engine.stations["flaky"]
            await until(
                lambda: good.inspections > 5 and flaky.error, "inspections, and a dead camera"
            )
            assert good.available
            assert not flaky.available
            assert "HTTP 503" in (flaky.error or "")
            assert any(s.station_id == "flaky" and not s.available for s in sink.states)
            cam.down = False  # the camera comes back: the station retries with backoff
            await until(lambda: flaky.available and flaky.inspections, "the camera is back")
            assert flaky.error is None
            assert any(s.station_id == "flaky" and s.available for s in sink.states)


@pytest.mark.parametrize(
    ("fps", "lost_frames", "new_incident"),
    [(20, 5, True), (5, 30, False)],
    ids=["outage-longer-than-lost-frames", "short-outage"],
)
async def test_a_camera_outage_counts_as_the_frames_it_missed(
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    fps: int,
    lost_frames: int,
    new_incident: bool,
) -> None:
    # The same defect before and after an outage of a second or two. At 20 fps that is more
    # than 5 frames: the part seen before has gone on, a defect there now is a new part's and
    # is reported. At 5 fps it is under 30 frames: the line stood still, nothing is new.
    async with camera() as cam:
        cam.snapshot_body = jpeg(defect_scenes[0].image)
        config = make_config(f"""
            - id: belt
              name: Belt
              source: {{type: http_snapshot, url: "{cam.url}/snapshot.jpg", timeout: 2}}
              model: {{path: MODEL, imgsz: 320}}
              defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
              tracking: {{lost_frames: {lost_frames}}}
              fps: {fps}
        """)
        sink = Recorder()
        async with Engine(config, sinks=[sink]) as engine:
            belt = engine.stations["belt"]
            await until(lambda: sink.incidents and belt.inspections > 3, "an incident")
            before = {i.track_id for i in sink.incidents}
            cam.down = True
            await until(lambda: belt.error, "the outage")
            count, seen = len(sink.incidents), belt.inspections
            cam.down = False
            if new_incident:
                await until(lambda: len(sink.incidents) > count, "an incident after the outage")
                assert {i.track_id for i in sink.incidents[count:]}.isdisjoint(before)
            else:
                await until(lambda: belt.inspections > seen + 5, "frames after the outage")
                assert len(sink.incidents) == count


async def test_a_bad_frame_is_skipped_and_counted(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    clean_scene: ConveyorFrame,
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "1.png"), clean_scene.image)
    (folder / "2.jpg").write_bytes(jpeg(clean_scene.image)[:500])
    cv2.imwrite(str(folder / "3.png"), clean_scene.image)
    config = make_config(f"""
        - id: belt
          name: Belt
          source: {{type: folder, path: {folder}}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {{scratch: 0.5}}
          fps: null
    """)
    sink = Recorder()
    engine = await _run_until_finished(config, sink)
    station = engine.stations["belt"]
    assert (station.inspections, station.frame_errors) == (2, 1)
    assert station.available


async def test_triggered_inspection_returns_the_verdict_with_the_part_id(
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    clean_scene: ConveyorFrame,
) -> None:
    async with camera() as cam:
        config = make_config(f"""
            - id: gate
              name: Gate
              mode: triggered
              source: {{type: http_snapshot, url: "{cam.url}/snapshot.jpg"}}
              model: {{path: MODEL, imgsz: 320}}
              defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
            - id: pushed
              name: Pushed
              mode: triggered
              source: {{type: push}}
              model: {{path: MODEL, imgsz: 320}}
              defects: {{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}}
        """)
        sink = Recorder()
        async with Engine(config, sinks=[sink]) as engine:
            cam.snapshot_body = jpeg(defect_scenes[0].image)
            bad = await engine.inspect_now("gate", part_id="P-100", lot_id="LOT-7")
            cam.snapshot_body = jpeg(clean_scene.image)
            good = await engine.inspect_now("gate", part_id="P-101")
            pushed = await engine.stations["pushed"].inspect_image(
                jpeg(defect_scenes[1].image), part_id="P-7"
            )
            # a caller is answered once the inspection is stored and told (it reads the
            # incident next): an inspection's incidents first, then the inspection
            assert {r.part_id for r in sink.inspections} == {"P-100", "P-101", "P-7"}
            assert {i.inspection_id for i in sink.incidents} == {
                bad.inspection_id,
                pushed.inspection_id,
            }
            stored = await engine.incidents(station_id="pushed")
            assert {i.incident_id for i in stored} == set(pushed.new_incident_ids) != set()
            with pytest.raises(StationNotFoundError):
                await engine.inspect_now("nope")
            engine.stations["gate"].set_enabled(False)
            with pytest.raises(EdgeInspectorError, match="disabled"):
                await engine.inspect_now("gate")
    assert (bad.verdict, bad.part_id, bad.lot_id) == ("fail", "P-100", "LOT-7")
    assert {d.class_name for d in bad.defects} >= {defect_scenes[0].truths[0].class_name}
    assert (good.verdict, good.part_id) == ("pass", "P-101")
    assert (pushed.verdict, pushed.part_id) == ("fail", "P-7")
    by_part = {i.part_id for i in sink.incidents}
    assert by_part == {"P-100", "P-7"}
    assert {r.part_id for r in sink.inspections} == {"P-100", "P-101", "P-7"}


async def test_a_station_with_a_missing_model_or_unknown_class_fails_alone(
    tmp_path: Path,
    make_config: Callable[..., EngineConfig],
    clean_scene: ConveyorFrame,
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "1.png"), clean_scene.image)
    config = make_config(f"""
        - id: ok
          name: OK
          source: {{type: folder, path: {folder}}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {{scratch: 0.5}}
        - id: no_model
          name: No model
          source: {{type: folder, path: {folder}}}
          model: {{path: {tmp_path / "missing.pt"}}}
          defects: {{scratch: 0.5}}
        - id: wrong_class
          name: Wrong class
          source: {{type: folder, path: {folder}}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {{rust: 0.5}}
    """)
    sink = Recorder()
    async with Engine(config, sinks=[sink]) as engine:
        await asyncio.wait_for(engine.wait_finished(), 60)
        states = {s.station_id: s for s in engine.states()}
        with pytest.raises(EdgeInspectorError, match="could not be loaded"):
            engine.station("no_model")
    assert states["ok"].inspections == 1
    assert not states["no_model"].available
    assert "missing.pt" in (states["no_model"].error or "")
    assert "rust" in (states["wrong_class"].error or "")
    assert "it knows: crack, dent, scratch, spot" in (states["wrong_class"].error or "")


async def test_stopping_leaves_no_threads_or_tasks(
    make_config: Callable[..., EngineConfig],
) -> None:
    before = {t.name for t in threading.enumerate()}
    config = make_config("""
        - id: belt
          name: Belt
          source: {type: synthetic, seed: 1}
          model: {path: MODEL, imgsz: 320}
          defects: {scratch: 0.5}
          fps: 20
    """)
    async with Engine(config) as engine:
        for _ in range(100):
            if engine.stations["belt"].inspections:
                break
            await asyncio.sleep(0.1)
        assert engine.stations["belt"].inspections > 0
    leftover = [
        t.name for t in threading.enumerate() if t.name not in before and "edge_inspector" in t.name
    ]
    assert leftover == []
    tasks = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [n for n in tasks if n.startswith("edge_inspector")]


async def test_every_model_runs_on_one_inference_thread(
    make_config: Callable[..., EngineConfig],
) -> None:
    # Two threads running PyTorch keep two OpenMP teams spinning on the same cores and halve
    # the speed of both; the engine must never start a second one.
    config = make_config(
        """
        - id: small
          name: Small
          source: {type: synthetic, seed: 1}
          model: {path: MODEL, imgsz: 320}
          defects: {scratch: 0.5}
          fps: 20
        """,
        """
        - id: large
          name: Large
          source: {type: synthetic, seed: 2}
          model: {path: MODEL, imgsz: 416}
          defects: {scratch: 0.5}
          fps: 20
        """,
    )
    async with Engine(config) as engine:
        assert len(engine._inference) == 2  # two models (same file, two input sizes)
        for _ in range(100):
            if all(s.inspections for s in engine.stations.values()):
                break
            await asyncio.sleep(0.1)
        assert all(s.inspections for s in engine.stations.values())
        inference_threads = [
            t for t in threading.enumerate() if t.name.startswith("edge_inspector_yolo")
        ]
    assert len(inference_threads) == 1


async def test_the_detectors_floor_follows_the_thresholds_back_up(
    make_config: Callable[..., EngineConfig], defect_scenes: list[ConveyorFrame]
) -> None:
    config = make_config("""
        - id: pushed
          name: Pushed
          mode: triggered
          source: {type: push}
          model: {path: MODEL, imgsz: 320}
          defects: {scratch: 0.45, dent: 0.45}
    """)
    picture = jpeg(defect_scenes[0].image)
    async with Engine(config, sinks=[Recorder()]) as engine:
        station = engine.stations["pushed"]
        before = await station.inspect_image(picture)
        await engine.set_threshold("pushed", None, 0.01)  # the lowest a threshold may be
        low = await station.inspect_image(picture)
        await engine.set_threshold("pushed", None, 0.45)
        after = await station.inspect_image(picture)
    # the tiny threshold made the detector report far more boxes; restoring it ends that
    assert len(low.detections) > len(before.detections)
    assert len(after.detections) == len(before.detections)
