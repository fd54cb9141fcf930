"""Defect rules (class, threshold, zones, size), tracking and the N-of-M debounce."""

from __future__ import annotations

import numpy as np
import pytest

from edge_inspector.config import DebounceConfig, StationConfig, TrackingConfig
from edge_inspector.detect.detector import RawDetections
from edge_inspector.detect.iou_tracker import IouTracker
from edge_inspector.detect.rules import DefectRules
from edge_inspector.detect.tracking import Debouncer, DefectTracker
from edge_inspector.events import BoundingBox, Detection

NAMES = {0: "scratch", 1: "dent", 2: "bolt"}
W, H = 640, 480
FRAME = np.zeros((H, W, 3), np.uint8)
TRACKERS = pytest.mark.parametrize("kind", ["iou", "bytetrack", "botsort"])


def _station(**overrides: object) -> StationConfig:
    data: dict[str, object] = {
        "id": "s1",
        "name": "S1",
        "source": {"type": "push"},
        "model": {"path": "m.pt"},
        "defects": {"scratch": 0.5, "dent": 0.7},
    }
    data.update(overrides)
    return StationConfig.model_validate(data)


def _raw(*rows: tuple[float, float, float, float, float, int]) -> RawDetections:
    arr = np.array(rows, np.float32).reshape(-1, 6)
    return RawDetections(arr[:, :4], arr[:, 4], arr[:, 5].astype(np.int64), 1.0, 10.0, 1.0)


def test_thresholds_are_per_class_and_other_classes_are_kept_as_not_defect() -> None:
    rules = DefectRules(_station(), NAMES)
    found = rules.apply(
        _raw((10, 10, 50, 50, 0.6, 0), (60, 60, 90, 90, 0.6, 1), (100, 100, 140, 140, 0.99, 2)),
        W,
        H,
    )
    assert [(d.class_name, d.defect) for d in found] == [
        ("scratch", True),
        ("dent", False),
        ("bolt", False),
    ]
    rules.set_threshold("dent", 0.55)
    assert rules.apply(_raw((60, 60, 90, 90, 0.6, 1)), W, H)[0].defect
    with pytest.raises(KeyError):
        rules.set_threshold("bolt", 0.1)


def test_region_of_interest_and_masks_use_the_box_centre() -> None:
    # ROI: the left half; mask: the top-left quarter of the left half.
    rules = DefectRules(
        _station(
            roi=[[0, 0], [0.5, 0], [0.5, 1], [0, 1]],
            masks=[[[0, 0], [0.25, 0], [0.25, 0.25], [0, 0.25]]],
        ),
        NAMES,
    )
    inside = (200, 300, 240, 340, 0.9, 0)  # centre (220, 320): in the ROI
    outside = (400, 300, 440, 340, 0.9, 0)  # centre x 420 > 320: outside
    masked = (40, 40, 80, 80, 0.9, 0)  # centre (60, 60): in the mask
    assert [d.defect for d in rules.apply(_raw(inside, outside, masked), W, H)] == [
        True,
        False,
        False,
    ]


def test_minimum_box_area_is_a_fraction_of_the_frame() -> None:
    rules = DefectRules(_station(min_box_area=0.01), NAMES)  # 1 % of 640x480 = 3072 px²
    small = (0, 0, 50, 50, 0.9, 0)  # 2500 px²
    large = (0, 0, 60, 60, 0.9, 0)  # 3600 px²
    assert [d.defect for d in rules.apply(_raw(small, large), W, H)] == [False, True]


def test_debounce_confirms_after_n_of_m_and_only_once() -> None:
    debounce = Debouncer(n=2, m=3)
    assert debounce.update(["track:1"]) == []
    assert debounce.update([]) == []
    assert debounce.update(["track:1"]) == ["track:1"]  # 2 of the last 3
    assert debounce.update(["track:1"]) == []  # never twice
    assert debounce.update([]) == []


def test_debounce_ignores_a_flicker() -> None:
    debounce = Debouncer(n=3, m=4)
    for present in (["class:dent"], [], [], [], ["class:dent"], [], [], []):
        assert debounce.update(present) == []


def test_class_key_re_arms_after_m_frames_absent() -> None:
    debounce = Debouncer(n=1, m=2)
    assert debounce.update(["class:dent"]) == ["class:dent"]
    assert debounce.update(["class:dent"]) == []
    assert debounce.update([]) == []
    assert debounce.update([]) == []  # absent for m frames: forgotten
    assert debounce.update(["class:dent"]) == ["class:dent"]


def _det(x: float, y: float, cls: str = "scratch", conf: float = 0.9) -> Detection:
    return Detection(
        class_name=cls,
        class_id=0 if cls == "scratch" else 1,
        confidence=conf,
        box=BoundingBox(x1=x, y1=y, x2=x + 40, y2=y + 20),
        defect=True,
    )


@TRACKERS
def test_one_scratch_moving_across_thirty_frames_is_one_incident(kind: str) -> None:
    tracker = DefectTracker(TrackingConfig(tracker=kind), DebounceConfig(n=2, m=3))
    confirmed = []
    ids = set()
    for frame in range(30):
        detections, new = tracker.update([_det(20 + 16 * frame, 200)], FRAME)
        confirmed += new
        ids |= {d.track_id for d in detections if d.track_id is not None}
    assert len(confirmed) == 1
    assert confirmed[0].class_name == "scratch"
    assert ids == {confirmed[0].track_id}


@TRACKERS
def test_two_defects_on_one_frame_are_two_incidents(kind: str) -> None:
    tracker = DefectTracker(TrackingConfig(tracker=kind), DebounceConfig(n=2, m=3))
    confirmed = []
    for frame in range(6):
        _, new = tracker.update(
            [_det(20 + 10 * frame, 100), _det(20 + 10 * frame, 350, "dent")], FRAME
        )
        confirmed += new
    assert sorted(c.class_name for c in confirmed) == ["dent", "scratch"]
    assert len({c.track_id for c in confirmed}) == 2


@TRACKERS
def test_a_defect_on_a_single_frame_does_not_pass_the_debounce(kind: str) -> None:
    tracker = DefectTracker(TrackingConfig(tracker=kind), DebounceConfig(n=2, m=3))
    assert tracker.update([_det(100, 100)], FRAME)[1] == []
    for _ in range(5):
        assert tracker.update([], FRAME)[1] == []


def test_without_tracking_the_class_is_debounced() -> None:
    tracker = DefectTracker(TrackingConfig(enabled=False), DebounceConfig(n=2, m=2))
    confirmed = [tracker.update([_det(10 * i, 10 * i)], FRAME)[1] for i in range(5)]
    assert [len(c) for c in confirmed] == [0, 1, 0, 0, 0]


def test_triggered_mode_reports_every_defect_class_of_the_one_part() -> None:
    tracker = DefectTracker(TrackingConfig(), DebounceConfig(n=3, m=5), triggered=True)
    detections = [_det(10, 10), _det(200, 10), _det(300, 300, "dent")]
    _, confirmed = tracker.update(detections, FRAME)
    assert [(c.class_name, c.indices) for c in confirmed] == [("dent", (2,)), ("scratch", (0, 1))]


@TRACKERS
def test_not_a_defect_is_never_tracked(kind: str) -> None:
    tracker = DefectTracker(TrackingConfig(tracker=kind), DebounceConfig(n=1, m=1))
    other = _det(10, 10).model_copy(update={"defect": False})
    for _ in range(3):
        detections, confirmed = tracker.update([other], FRAME)
        assert confirmed == []
        assert detections[0].track_id is None


@TRACKERS
def test_a_small_fast_defect_keeps_its_track(kind: str) -> None:
    # A 20 px spot moving 16 px a frame overlaps its last box by only a fifth: matched on
    # enlarged boxes it still keeps one track (and so makes one incident).
    tracker = DefectTracker(TrackingConfig(tracker=kind), DebounceConfig(n=2, m=3))
    spot = Detection(
        class_name="dent",
        class_id=1,
        confidence=0.55,
        box=BoundingBox(x1=0, y1=200, x2=20, y2=220),
        defect=True,
    )
    confirmed, ids = [], set()
    for frame in range(25):
        moved = spot.model_copy(
            update={"box": BoundingBox(x1=16 * frame, y1=200, x2=16 * frame + 20, y2=220)}
        )
        detections, new = tracker.update([moved], FRAME)
        confirmed += new
        ids.add(detections[0].track_id)
    assert len(confirmed) == 1
    assert len(ids - {None}) == 1


@TRACKERS
def test_after_an_outage_longer_than_lost_frames_a_defect_is_new(kind: str) -> None:
    # The camera was out for 40 frames' time: the part it saw has gone on. A defect where that
    # part would be now is another part's, and must be reported, not taken for the old one.
    tracker = DefectTracker(TrackingConfig(tracker=kind), DebounceConfig(n=2, m=3))
    first = [c for x in range(4) for c in tracker.update([_det(20 + 10 * x, 100)], FRAME)[1]]
    tracker.skip(40)
    again = [c for x in range(4, 8) for c in tracker.update([_det(20 + 10 * x, 100)], FRAME)[1]]
    assert len(first) == 1
    assert len(again) == 1
    assert again[0].track_id != first[0].track_id


@TRACKERS
def test_after_a_short_outage_a_line_that_stood_still_reports_nothing_twice(kind: str) -> None:
    tracker = DefectTracker(TrackingConfig(tracker=kind), DebounceConfig(n=2, m=3))
    first = [c for _ in range(4) for c in tracker.update([_det(200, 100)], FRAME)[1]]
    tracker.skip(5)
    again = [c for _ in range(4) for c in tracker.update([_det(200, 100)], FRAME)[1]]
    assert len(first) == 1
    assert again == []


def test_without_tracking_a_class_absent_for_an_outage_of_m_frames_re_arms() -> None:
    tracker = DefectTracker(TrackingConfig(enabled=False), DebounceConfig(n=1, m=3))
    assert len(tracker.update([_det(10, 10)], FRAME)[1]) == 1
    assert tracker.update([_det(10, 10)], FRAME)[1] == []
    tracker.skip(3)
    assert len(tracker.update([_det(10, 10)], FRAME)[1]) == 1


def _box(x: float, y: float, w: float = 40, h: float = 40) -> tuple[float, float, float, float]:
    """A defect's box as the station gives it to the tracker: enlarged 2.5 times."""
    cx, cy = x + w / 2, y + h / 2
    return (cx - 1.25 * w, cy - 1.25 * h, cx + 1.25 * w, cy + 1.25 * h)


def test_iou_tracker_follows_a_defect_through_a_gap_at_its_speed() -> None:
    tracker = IouTracker(lost_frames=5)
    ids = [tracker.update([_box(30 * f, 100)])[0] for f in range(4)]
    assert _box(30 * 7, 100)[0] > _box(30 * 3, 100)[2]
    for _ in range(3):  # hidden for three frames while it moves on at 30 px a frame
        assert tracker.update([]) == []
    ids += tracker.update([_box(30 * 7, 100)])
    # 90 px past where it was last seen, further than its enlarged box is wide: found only
    # by predicting its motion.
    assert len(set(ids)) == 1


@pytest.mark.parametrize(("missed", "kept"), [(2, True), (3, False)])
def test_iou_tracker_forgets_a_track_missed_on_more_than_lost_frames(
    missed: int, kept: bool
) -> None:
    tracker = IouTracker(lost_frames=2)
    (first,) = {tracker.update([_box(100, 100)])[0] for _ in range(2)}
    for _ in range(missed):
        tracker.update([])
    assert (tracker.update([_box(100, 100)]) == [first]) is kept


def test_iou_tracker_skip_moves_tracks_on_and_ages_them() -> None:
    tracker = IouTracker(lost_frames=5)
    (moving,) = {tracker.update([_box(30 * f, 100)])[0] for f in range(4)}
    tracker.skip(3)  # three frames unseen: it is now at 30 * 7, beyond its enlarged box
    assert tracker.update([_box(30 * 7, 100)]) == [moving]
    tracker.skip(6)
    assert tracker.update([_box(30 * 14, 100)]) != [moving]


def test_iou_tracker_drops_a_track_seen_once_and_not_on_the_next_frame() -> None:
    tracker = IouTracker(lost_frames=30)
    (once,) = tracker.update([_box(100, 100)])
    tracker.update([])
    assert tracker.update([_box(100, 100)]) != [once]


def test_iou_tracker_follows_a_new_defect_at_the_line_speed() -> None:
    # A belt moving 48 px a frame and a 16 px spot: its enlarged box (40 px) moves further than
    # it is wide between two frames. A new track has no velocity of its own; predicted where it
    # was, the spot would start a new track on every frame and never pass the debounce.
    tracker = IouTracker(lost_frames=30)
    for f in range(4):  # a part ahead sets the line's speed
        tracker.update([_box(300 + 48 * f, 100, 60, 60)])
    assert _box(48, 300, 16, 16)[0] > _box(0, 300, 16, 16)[2]
    ids = {tracker.update([_box(48 * f, 300, 16, 16)])[0] for f in range(6)}
    assert len(ids) == 1


def test_iou_tracker_keeps_a_defect_that_stands_still_on_a_moving_line() -> None:
    # Dirt on the lens: it stays put while the parts move. Not at the line's speed, it is
    # matched where it was.
    tracker = IouTracker(lost_frames=30)
    for f in range(4):
        tracker.update([_box(32 * f, 300)])
    ids = [tracker.update([_box(32 * (4 + f), 300), _box(500, 50, 12, 12)])[1] for f in range(5)]
    assert len(set(ids)) == 1


def test_iou_tracker_dirt_on_the_lens_does_not_stop_the_line() -> None:
    # A spot of dirt is matched, standing still, on every frame, and between parts it is the
    # only thing matched: it must not bring the line's speed down to nothing, or the next small
    # defect on a fast belt is predicted where it was and starts a new track on every frame.
    tracker = IouTracker(lost_frames=30)
    dirt = _box(600, 20, 12, 12)
    for f in range(4):  # a part goes by at 48 px a frame
        tracker.update([_box(100 + 48 * f, 100, 60, 60), dirt])
    for _ in range(10):
        tracker.update([dirt])
    ids = {tracker.update([_box(48 * f, 300, 16, 16), dirt])[0] for f in range(6)}
    assert len(ids) == 1


def test_iou_tracker_a_second_box_on_one_defect_does_not_take_its_track() -> None:
    # The demo model on a belt at 24 px a frame: one scratch followed for frames, then drawn
    # twice on one frame. On the next frame the new track (the second box, predicted at the
    # line's speed) fits the scratch's one box a little better than the scratch's own track;
    # known tracks choose first, so the scratch keeps its id and the second box is dropped.
    tracker = IouTracker(lost_frames=30)
    (scratch,) = {tracker.update([_box(217 + 25 * f, 268, 72, 42)])[0] for f in range(5)}
    ids = tracker.update([_box(338, 268, 80, 42), _box(341, 267, 58, 41)])
    assert ids[0] == scratch
    assert tracker.update([_box(366, 267, 67, 42)]) == [scratch]
