"""Pictures of what the engine saw: boxes and labels on the frame, and crops of defects.

A picture is drawn for what it shows. The highlighted detections (an incident's own defects, or
every defect on a live frame) are drawn last, bold, with a filled label, so nothing covers them;
every other detection is context, drawn thin and blended into the frame, its label left out
where it finds no room near its box off the highlighted boxes. Labels do not overlap while the
picture has room: each goes above its box, else below, else inside, else as near as it fits,
inside the picture. Sizes follow the picture's, so a label reads as well on a 320x240 frame as
on a 1920x1080 one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .events import BoundingBox, Detection
from .frames import Image

__all__ = ["Label", "annotate", "crop", "label_layout"]

_DEFECT = (32, 32, 200)  # BGR red: white text on it has a contrast of 5.6:1
_OTHER = (160, 110, 20)  # BGR blue, dark enough for white text: detections that are not defects
_TEXT = (255, 255, 255)
_CONTEXT_ALPHA = 0.45  # how strongly a context detection shows through the frame
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, slots=True)
class Label:
    """Where a detection's label lies on the drawn picture: its filled rectangle from (x1, y1)
    to (x2, y2), the far edges excluded, in the picture's pixels."""

    detection: Detection
    text: str
    x1: int
    y1: int
    x2: int
    y2: int
    highlighted: bool

    def intersects(self, other: Label) -> bool:
        """Whether the two labels share a pixel."""
        return _overlap(self, other)


@dataclass(frozen=True, slots=True)
class _Rect:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class _Mark:
    """A detection as drawn: its box in the picture's pixels, and whether it is highlighted."""

    detection: Detection
    box: _Rect
    highlighted: bool


@dataclass(frozen=True, slots=True)
class _Style:
    """Line and text sizes for one picture, from its size."""

    scale: float
    text_thickness: int
    box_thickness: int
    context_thickness: int
    pad: int

    @classmethod
    def of(cls, width: int, height: int) -> _Style:
        side = min(width, height)
        # a scale of 0.55 draws letters 11 px high: the least that reads on a 320x240 frame
        scale = max(0.55, side / 900)
        box = max(2, round(side / 250))
        return cls(
            scale=scale,
            text_thickness=max(1, round(scale * 1.5)),
            box_thickness=box,
            context_thickness=max(1, box // 2),
            pad=max(2, round(scale * 5)),
        )


def annotate(
    image: Image,
    detections: Sequence[Detection],
    *,
    confirmed: Sequence[Detection] | None = None,
    max_width: int | None = None,
) -> Image:
    """A copy of the frame with each detection's box and "class confidence #track" label.

    `confirmed`: the detections the picture is about (an incident's own); those marked `defect`
    are highlighted and the rest are context. None: every defect is highlighted (a live view).
    `max_width`: the picture is scaled down to it first, so its labels keep their size.
    """
    out = _fitted(image, max_width)
    height, width = out.shape[:2]
    style = _Style.of(width, height)
    marks = _marks(detections, confirmed, width / image.shape[1])
    labels = _place(marks, width, height, style)
    context = [m for m in marks if not m.highlighted]
    if context:
        layer = out.copy()
        for mark in context:
            _draw_box(layer, mark.box, _color(mark.detection), style.context_thickness)
        for label in labels:
            if not label.highlighted:
                _draw_label(layer, label, _color(label.detection), style)
        out = np.asarray(
            cv2.addWeighted(layer, _CONTEXT_ALPHA, out, 1 - _CONTEXT_ALPHA, 0), np.uint8
        )
    for mark in marks:
        if mark.highlighted:
            _draw_box(out, mark.box, _color(mark.detection), style.box_thickness)
    for label in labels:
        if label.highlighted:
            _draw_label(out, label, _color(label.detection), style)
    return np.ascontiguousarray(out)


def label_layout(
    image: Image,
    detections: Sequence[Detection],
    *,
    confirmed: Sequence[Detection] | None = None,
    max_width: int | None = None,
) -> tuple[Label, ...]:
    """The labels `annotate` draws with the same arguments, highlighted ones first, in the
    drawn picture's pixels; a context label left out is not among them."""
    width, height = _fitted_size(image, max_width)
    marks = _marks(detections, confirmed, width / image.shape[1])
    return _place(marks, width, height, _Style.of(width, height))


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


def _fitted_size(image: Image, max_width: int | None) -> tuple[int, int]:
    height, width = image.shape[:2]
    if max_width is None or width <= max_width:
        return width, height
    return max_width, round(height * max_width / width)


def _fitted(image: Image, max_width: int | None) -> Image:
    size = _fitted_size(image, max_width)
    if size[0] == image.shape[1]:
        return image.copy()
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)


def _marks(
    detections: Sequence[Detection], confirmed: Sequence[Detection] | None, factor: float
) -> list[_Mark]:
    """Context first, then the highlighted ones, each least confident first: the most confident
    is drawn last and its label placed first."""
    shown = list(detections)
    if confirmed is not None:
        shown += [c for c in confirmed if c not in shown]  # drawn even if left out of the frame's

    def highlighted(det: Detection) -> bool:
        return det.defect and (confirmed is None or det in confirmed)

    marks = [
        _Mark(
            det,
            _Rect(*(round(v * factor) for v in (det.box.x1, det.box.y1, det.box.x2, det.box.y2))),
            highlighted(det),
        )
        for det in shown
    ]
    marks.sort(key=lambda m: (m.highlighted, m.detection.confidence))
    return marks


def _text(det: Detection) -> str:
    text = f"{det.class_name} {det.confidence:.2f}"
    return text if det.track_id is None else f"{text} #{det.track_id}"


def _color(det: Detection) -> tuple[int, int, int]:
    return _DEFECT if det.defect else _OTHER


def _place(marks: Sequence[_Mark], width: int, height: int, style: _Style) -> tuple[Label, ...]:
    """Highlighted labels first, where they fit best; then context labels where they cover
    neither a label nor a highlighted box, or nowhere."""
    placed: list[Label] = []
    line = style.box_thickness
    highlighted_boxes = [
        _Rect(m.box.x1 - line, m.box.y1 - line, m.box.x2 + line + 1, m.box.y2 + line + 1)
        for m in marks
        if m.highlighted
    ]
    for mark in reversed(marks):
        text = _text(mark.detection)
        (text_w, text_h), base = cv2.getTextSize(text, _FONT, style.scale, style.text_thickness)
        size = (text_w + 2 * style.pad, text_h + base + 2 * style.pad)
        avoid: list[Label | _Rect] = list(placed)
        reach = None
        if not mark.highlighted:
            avoid += highlighted_boxes
            reach = 2 * size[1]  # a context label further from its box would mislead
        spot = _free_spot(
            mark.box,
            size,
            width=width,
            height=height,
            avoid=avoid,
            inset=style.box_thickness,
            reach=reach,
        )
        if spot is None:
            if not mark.highlighted:
                continue
            spot = _preferred(mark.box, size, width, height)  # the picture is full: overlap
        x, y = spot
        placed.append(Label(mark.detection, text, x, y, x + size[0], y + size[1], mark.highlighted))
    return tuple(placed)


def _preferred(box: _Rect, size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    return _clamp(box.x1, 0, width - size[0]), _clamp(box.y1 - size[1], 0, height - size[1])


def _free_spot(
    box: _Rect,
    size: tuple[int, int],
    *,
    width: int,
    height: int,
    avoid: Sequence[Label | _Rect],
    inset: int,
    reach: int | None,
) -> tuple[int, int] | None:
    """Above the box, else below, else inside its top; else the free height nearest to above
    (down first on a tie), at most `reach` from it. None: no such height at the box's left."""
    label_w, label_h = size
    x = _clamp(box.x1, 0, width - label_w)
    # only what shares columns with the label can block it
    blocking = [r for r in avoid if r.x1 < x + label_w and x < r.x2]

    def free(y: int) -> bool:
        if y < 0 or y + label_h > height:
            return False
        spot = _Rect(x, y, x + label_w, y + label_h)
        return not any(_overlap(spot, r) for r in blocking)

    above = box.y1 - label_h
    for y in (above, box.y2 + 1, box.y1 + inset):
        if free(y):
            return x, y
    start = _clamp(above, 0, height - label_h)
    # the nearest free height touches an obstacle's edge or the picture's
    heights = _edges(blocking, label_h, height)
    for y in sorted(heights, key=lambda y: (abs(y - start), y < start)):
        if reach is not None and abs(y - start) > reach:
            break
        if free(y):
            return x, y
    return None


def _edges(blocking: Iterable[Label | _Rect], label_h: int, height: int) -> set[int]:
    edges = {0, height - label_h}
    for r in blocking:
        edges.update((r.y2, r.y1 - label_h))
    return edges


def _overlap(a: Label | _Rect, b: Label | _Rect) -> bool:
    return a.x1 < b.x2 and b.x1 < a.x2 and a.y1 < b.y2 and b.y1 < a.y2


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high)) if high >= low else low


def _draw_box(out: Image, box: _Rect, color: tuple[int, int, int], thickness: int) -> None:
    cv2.rectangle(out, (box.x1, box.y1), (box.x2, box.y2), color, thickness, cv2.LINE_8)


def _draw_label(out: Image, label: Label, color: tuple[int, int, int], style: _Style) -> None:
    cv2.rectangle(out, (label.x1, label.y1), (label.x2 - 1, label.y2 - 1), color, -1)
    (_, text_h), _ = cv2.getTextSize(label.text, _FONT, style.scale, style.text_thickness)
    cv2.putText(
        out,
        label.text,
        (label.x1 + style.pad, label.y1 + style.pad + text_h),
        _FONT,
        style.scale,
        _TEXT,
        style.text_thickness,
        cv2.LINE_AA,
    )
