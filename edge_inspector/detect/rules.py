"""A station's rules: which detections are defects (class, confidence, zones, size)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..config import StationConfig
from ..events import BoundingBox, Detection
from .detector import RawDetections

__all__ = ["DefectRules"]

type Polygon = tuple[tuple[float, float], ...]


def _inside(polygon: Polygon, x: float, y: float, width: int, height: int) -> bool:
    points = np.array([(px * width, py * height) for px, py in polygon], np.float32)
    return cv2.pointPolygonTest(points, (float(x), float(y)), False) >= 0


class DefectRules:
    """Turns a model's raw output into detections marked defect or not.

    A detection is a defect when its class is one of the station's defect classes, its
    confidence reaches that class's threshold, its centre lies inside the region of interest
    (when there is one) and outside every mask, and its box covers at least `min_box_area` of
    the frame. Detections of other classes are kept (marked not defect) for the record.
    """

    def __init__(self, station: StationConfig, names: dict[int, str]) -> None:
        self._thresholds = {name: d.confidence for name, d in station.defects.items()}
        self._roi: Polygon | None = station.roi
        self._masks: Sequence[Polygon] = station.masks
        self._min_area = station.min_box_area
        self._names = names

    def set_threshold(self, class_name: str, confidence: float) -> None:
        """Change one defect class's threshold at run time."""
        if class_name not in self._thresholds:
            raise KeyError(class_name)
        self._thresholds[class_name] = confidence

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self._thresholds)

    def is_defect(
        self, class_name: str, confidence: float, box: BoundingBox, width: int, height: int
    ) -> bool:
        threshold = self._thresholds.get(class_name)
        if threshold is None or confidence < threshold:
            return False
        if box.area < self._min_area * width * height:
            return False
        cx, cy = box.center
        if self._roi is not None and not _inside(self._roi, cx, cy, width, height):
            return False
        return not any(_inside(mask, cx, cy, width, height) for mask in self._masks)

    def apply(self, raw: RawDetections, width: int, height: int) -> list[Detection]:
        # The values come from the model's own arrays, already typed and in range: the models
        # are built without re-validation, which is a measurable part of a GPU frame's time.
        detections = []
        for (x1, y1, x2, y2), conf, cls in zip(
            raw.boxes.tolist(), raw.confidences.tolist(), raw.class_ids.tolist(), strict=True
        ):
            class_id = int(cls)
            name = self._names.get(class_id, str(class_id))
            box = BoundingBox.model_construct(x1=x1, y1=y1, x2=x2, y2=y2)
            confidence = round(conf, 4)
            detections.append(
                Detection.model_construct(
                    track_id=None,
                    class_name=name,
                    class_id=class_id,
                    confidence=confidence,
                    box=box,
                    defect=self.is_defect(name, confidence, box, width, height),
                )
            )
        return detections
