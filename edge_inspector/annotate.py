"""Pictures of what the engine saw: boxes and labels on the frame, and crops of defects."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .events import BoundingBox, Detection
from .frames import Image

__all__ = ["annotate", "crop"]

_DEFECT = (40, 40, 230)  # BGR red
_OTHER = (200, 160, 40)


def annotate(
    image: Image, detections: Sequence[Detection], *, max_width: int | None = None
) -> Image:
    """A copy of the frame with each detection's box and "class confidence" label."""
    out = image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(width, height) / 300))
    scale = max(0.4, min(width, height) / 900)
    for det in detections:
        color = _DEFECT if det.defect else _OTHER
        x1, y1, x2, y2 = (round(v) for v in (det.box.x1, det.box.y1, det.box.x2, det.box.y2))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f"{det.class_name} {det.confidence:.2f}"
        if det.track_id is not None:
            label += f" #{det.track_id}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else y2 + th + 4
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty + base - 2), color, -1)
        cv2.putText(
            out,
            label,
            (x1 + 2, ty - 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    if max_width is not None and width > max_width:
        out = np.asarray(
            cv2.resize(
                out, (max_width, round(height * max_width / width)), interpolation=cv2.INTER_AREA
            ),
            np.uint8,
        )
    return np.ascontiguousarray(out)


def crop(
    image: Image, boxes: Sequence[BoundingBox], *, margin: float = 0.5, min_size: int = 64
) -> Image:
    """The part of the frame around the boxes, with a margin of context, at least `min_size`."""
    height, width = image.shape[:2]
    x1 = min(b.x1 for b in boxes)
    y1 = min(b.y1 for b in boxes)
    x2 = max(b.x2 for b in boxes)
    y2 = max(b.y2 for b in boxes)
    pad_x = max((x2 - x1) * margin, (min_size - (x2 - x1)) / 2, 0)
    pad_y = max((y2 - y1) * margin, (min_size - (y2 - y1)) / 2, 0)
    left, top = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    right, bottom = min(width, int(np.ceil(x2 + pad_x))), min(height, int(np.ceil(y2 + pad_y)))
    if right <= left or bottom <= top:
        return image.copy()
    return np.ascontiguousarray(image[top:bottom, left:right])
