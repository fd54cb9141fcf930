"""Tracking and debounce: one scratch seen on 30 frames is one defect, not 30.

Defect detections are followed across frames, one tracker per station: by default the lean IoU
tracker of `iou_tracker` (constant-velocity prediction, greedy IoU matching, tens of
microseconds a frame), or Ultralytics' own ByteTrack or BoT-SORT. A track becomes an incident
once it is seen in `n` of the last `m` frames, and only once. Without tracking, the class plays
the part of the track: one incident per class until that class has been absent for `m` frames.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DebounceConfig, TrackingConfig
from ..events import Detection
from ..frames import Image
from .iou_tracker import IouTracker

__all__ = ["Confirmation", "Debouncer", "DefectTracker"]

_MAX_REMEMBERED_TRACKS = 4096


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A defect that just passed the debounce rule: which detections (indices) show it."""

    key: str
    class_name: str
    indices: tuple[int, ...]
    track_id: int | None


class Debouncer:
    """Confirms a key once it is present in `n` of its last `m` frames."""

    def __init__(self, n: int, m: int) -> None:
        self.n, self.m = n, m
        self._windows: dict[str, collections.deque[bool]] = {}
        self._confirmed: collections.OrderedDict[str, None] = collections.OrderedDict()

    def update(self, present: Sequence[str]) -> list[str]:
        """Record a frame in which the keys in `present` were seen; return those newly confirmed."""
        seen = set(present)
        newly: list[str] = []
        for key in list(self._windows.keys() | seen):
            window = self._windows.setdefault(key, collections.deque(maxlen=self.m))
            window.append(key in seen)
            if not any(window):
                del self._windows[key]
                if key.startswith("class:"):
                    self._confirmed.pop(key, None)  # the class was gone for m frames: re-arm
                continue
            if key not in self._confirmed and sum(window) >= self.n:
                self._confirmed[key] = None
                newly.append(key)
                while len(self._confirmed) > _MAX_REMEMBERED_TRACKS:
                    self._confirmed.popitem(last=False)
        return sorted(newly)


def _tracker_args(tracking: TrackingConfig) -> Any:
    from ultralytics.utils import IterableSimpleNamespace

    args: dict[str, Any] = {
        "tracker_type": tracking.tracker,
        # Detections reaching the tracker already passed the station's thresholds.
        "track_high_thresh": 0.0,
        "track_low_thresh": 0.0,
        "new_track_thresh": 0.0,
        "track_buffer": tracking.lost_frames,
        "match_thresh": 0.8,
        # Thresholds were applied before tracking: a 0.5 detection must match as well as a 0.9.
        "fuse_score": False,
    }
    if tracking.tracker == "botsort":
        args |= {
            "gmc_method": "none",
            "proximity_thresh": 0.5,
            "appearance_thresh": 0.8,
            "with_reid": False,
            "model": "auto",
        }
    return IterableSimpleNamespace(**args)


class DefectTracker:
    """One station's tracker and debounce state. Not thread-safe: one frame at a time."""

    def __init__(
        self, tracking: TrackingConfig, debounce: DebounceConfig, *, triggered: bool = False
    ) -> None:
        self._triggered = triggered
        self._tracking = tracking.enabled and not triggered
        self._debounce = Debouncer(debounce.n, debounce.m)
        self._tracker: Any = None
        self._iou: IouTracker | None = None
        self._box_scale = tracking.box_scale
        self._lost_frames = tracking.lost_frames
        self._skip = 0  # frames missed, to let go by before the next frame (see skip)
        if self._tracking and tracking.tracker == "iou":
            self._iou = IouTracker(tracking.lost_frames)
        elif self._tracking:
            from ultralytics.trackers.bot_sort import BOTSORT
            from ultralytics.trackers.byte_tracker import BYTETracker

            cls = BOTSORT if tracking.tracker == "botsort" else BYTETracker
            self._tracker = cls(args=_tracker_args(tracking))

    def skip(self, frames: int) -> None:
        """Frames that went by unseen (a camera outage), taken into account at the next
        `update`, on the thread that runs it: tracks move on and age out as if those frames had
        come with nothing on them, and the debounce forgets what was absent for `m` of them.
        Called from any thread."""
        self._skip += max(0, frames)

    def _pass(self, frames: int, image: Image) -> None:
        if self._iou is not None:
            self._iou.skip(frames)
        elif self._tracker is not None:
            for _ in range(min(frames, self._lost_frames + 1)):  # after that all are lost
                self._track([], [], image)
        for _ in range(min(frames, self._debounce.m)):  # after that every window is empty
            self._debounce.update([])

    def update(
        self,
        detections: list[Detection],
        image: Image,
    ) -> tuple[list[Detection], list[Confirmation]]:
        """Give defects track ids and return the defects confirmed by this frame."""
        if self._skip and not self._triggered:
            missed, self._skip = self._skip, 0
            self._pass(missed, image)
        defect_idx = [i for i, d in enumerate(detections) if d.defect]
        if self._triggered:
            # One part per trigger: every defect class on it is an incident, no debounce.
            by_class: dict[str, list[int]] = collections.defaultdict(list)
            for i in defect_idx:
                by_class[detections[i].class_name].append(i)
            return detections, [
                Confirmation(f"class:{name}", name, tuple(idx), None)
                for name, idx in sorted(by_class.items())
            ]
        keys: dict[str, list[int]] = collections.defaultdict(list)
        if self._iou is not None or self._tracker is not None:
            detections = list(detections)
            for i, track_id in self._track(detections, defect_idx, image).items():
                detections[i] = detections[i].model_copy(update={"track_id": track_id})
                keys[f"track:{track_id}"].append(i)
        else:
            for i in defect_idx:
                keys[f"class:{detections[i].class_name}"].append(i)
        confirmations = []
        for key in self._debounce.update(list(keys)):
            idx = tuple(keys[key])
            best = max(idx, key=lambda i: detections[i].confidence)
            confirmations.append(
                Confirmation(key, detections[best].class_name, idx, detections[best].track_id)
            )
        return detections, confirmations

    def _track(
        self, detections: list[Detection], defect_idx: list[int], image: Image
    ) -> dict[int, int]:
        if self._iou is not None:
            return self._track_iou(detections, defect_idx)
        from ultralytics.engine.results import Boxes

        tracker = self._tracker
        if not defect_idx and not tracker.tracked_stracks and not tracker.lost_stracks:
            # Nothing to match and nothing to age: on a clean line this is most frames, and
            # the tracker's update is the costliest step of the rules.
            return {}
        rows = np.array(
            [
                [*box, detections[i].confidence, detections[i].class_id]
                for i, box in zip(defect_idx, self._boxes(detections, defect_idx), strict=True)
            ],
            np.float32,
        ).reshape(-1, 6)
        tracks = tracker.update(Boxes(rows, image.shape[:2]), image)
        assigned: dict[int, int] = {}
        for track in np.asarray(tracks).reshape(-1, 8):
            local = int(track[7])
            if 0 <= local < len(defect_idx):
                assigned[defect_idx[local]] = int(track[4])
        return assigned

    def _track_iou(self, detections: list[Detection], defect_idx: list[int]) -> dict[int, int]:
        tracker = self._iou
        assert tracker is not None
        if not defect_idx and not tracker.tracks:
            return {}
        boxes = self._boxes(detections, defect_idx)
        return dict(zip(defect_idx, tracker.update(boxes), strict=True))

    def _boxes(
        self, detections: list[Detection], defect_idx: list[int]
    ) -> list[tuple[float, float, float, float]]:
        """The defects' boxes as the tracker matches them: enlarged `box_scale` times around
        their centre. IoU of a 24 px spot that moved 16 px is 0.2 as it is and 0.6 enlarged 2.5
        times. Only the track ids are used; the boxes reported are the model's own."""
        scale = self._box_scale / 2
        boxes = []
        for i in defect_idx:
            b = detections[i].box
            cx, cy = (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2
            hw, hh = (b.x2 - b.x1) * scale, (b.y2 - b.y1) * scale
            boxes.append((cx - hw, cy - hh, cx + hw, cy + hh))
        return boxes
