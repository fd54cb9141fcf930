"""A synthetic conveyor camera: metal parts on a moving belt, some with surface defects.

The same renderer makes the demo's live frames and the demo model's training data, so the model
sees at run time exactly the kind of image it was trained on. Every frame comes with its ground
truth (class and box of each visible defect), which tests use to check what the engine reports.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

DEFECT_CLASSES: tuple[str, ...] = ("scratch", "dent", "crack", "spot")

type Image = npt.NDArray[np.uint8]
type Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """One visible defect: its class, its box in frame pixels (x1, y1, x2, y2), and a key that
    stays the same on every frame the defect is seen on (part id and defect number)."""

    class_name: str
    box: Box
    key: str = ""


@dataclass(frozen=True, slots=True)
class ConveyorFrame:
    """A rendered frame, the part ids on it and the defects a perfect inspector would report."""

    image: Image
    truths: tuple[GroundTruth, ...]
    part_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Sprite:
    """A part rendered once (with its defects), pasted wherever it is on the belt."""

    part_id: int
    pixels: Image
    alpha: npt.NDArray[np.float32]
    defects: tuple[GroundTruth, ...]  # boxes relative to the sprite's top-left corner

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]


def _clip_box(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _draw_scratch(img: Image, rng: np.random.Generator, cx: float, cy: float) -> Box:
    length = rng.uniform(36, 80)
    angle = rng.uniform(0, math.pi)
    bend = rng.uniform(-8, 8)
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    nx, ny = -math.sin(angle), math.cos(angle)
    pts = np.array(
        [[cx - dx, cy - dy], [cx + nx * bend, cy + ny * bend], [cx + dx, cy + dy]], np.float64
    )
    poly = pts.round().astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(img, [poly + 1], False, (70, 70, 70), 2, cv2.LINE_AA)
    cv2.polylines(img, [poly], False, (250, 250, 250), int(rng.integers(1, 3)), cv2.LINE_AA)
    pad = 4.0
    return (
        float(pts[:, 0].min()) - pad,
        float(pts[:, 1].min()) - pad,
        float(pts[:, 0].max()) + pad,
        float(pts[:, 1].max()) + pad,
    )


def _draw_dent(img: Image, rng: np.random.Generator, cx: float, cy: float) -> Box:
    ax, ay = rng.uniform(10, 20), rng.uniform(8, 16)
    angle = rng.uniform(0, 180)
    shade = np.zeros(img.shape[:2], np.float32)
    cv2.ellipse(shade, (round(cx), round(cy)), (round(ax), round(ay)), angle, 0, 360, 1.0, -1)
    shade = np.asarray(cv2.GaussianBlur(shade, (0, 0), 2.5), np.float32)
    light = np.zeros_like(shade)
    cv2.ellipse(
        light,
        (round(cx - ax * 0.3), round(cy - ay * 0.3)),
        (round(ax * 0.45), round(ay * 0.4)),
        angle,
        0,
        360,
        1.0,
        -1,
    )
    light = np.asarray(cv2.GaussianBlur(light, (0, 0), 2.0), np.float32)
    out = img.astype(np.float32) * (1.0 - 0.55 * shade[..., None]) + 90.0 * light[..., None]
    img[:] = np.clip(out, 0, 255).astype(np.uint8)
    r = max(ax, ay) + 3
    return (cx - r, cy - r, cx + r, cy + r)


def _draw_crack(img: Image, rng: np.random.Generator, cx: float, cy: float) -> Box:
    angle = rng.uniform(0, math.pi)
    steps = int(rng.integers(6, 10))
    step = rng.uniform(5, 8)
    x, y = cx - math.cos(angle) * steps * step / 2, cy - math.sin(angle) * steps * step / 2
    pts = [(x, y)]
    for _ in range(steps):
        a = angle + rng.uniform(-0.8, 0.8)
        x, y = x + math.cos(a) * step, y + math.sin(a) * step
        pts.append((x, y))
    branch_at = pts[int(rng.integers(2, steps - 1))]
    a = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
    branch = [branch_at]
    bx, by = branch_at
    for _ in range(3):
        bx, by = bx + math.cos(a) * step * 0.8, by + math.sin(a) * step * 0.8
        branch.append((bx, by))
    for line in (pts, branch):
        poly = np.array(line).round().astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(img, [poly], False, (25, 25, 30), 2, cv2.LINE_AA)
    every = np.array(pts + branch)
    pad = 4.0
    return (
        float(every[:, 0].min()) - pad,
        float(every[:, 1].min()) - pad,
        float(every[:, 0].max()) + pad,
        float(every[:, 1].max()) + pad,
    )


def _draw_spot(img: Image, rng: np.random.Generator, cx: float, cy: float) -> Box:
    r = rng.uniform(7, 14)
    color = (
        np.array([30, 70, 140], np.float32)  # rust (BGR)
        if rng.random() < 0.6
        else np.array([35, 35, 30], np.float32)  # oil
    )
    mask = np.zeros(img.shape[:2], np.float32)
    for _ in range(3):  # an irregular blob, not a perfect circle
        ox, oy = rng.normal(0, r * 0.25, 2)
        cv2.circle(
            mask, (round(cx + ox), round(cy + oy)), round(r * rng.uniform(0.6, 0.9)), 1.0, -1
        )
    mask = cv2.GaussianBlur(mask, (0, 0), 1.5)[..., None] * 0.85
    img[:] = np.clip(img * (1 - mask) + color * mask, 0, 255).astype(np.uint8)
    return (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)


_PAINTERS = {
    "scratch": _draw_scratch,
    "dent": _draw_dent,
    "crack": _draw_crack,
    "spot": _draw_spot,
}


def _part_outline(rng: np.random.Generator) -> tuple[bool, npt.NDArray[np.float32]]:
    """A disc or a rounded rectangle: whether it is a disc, and its alpha mask."""
    disc = rng.random() < 0.35
    if disc:
        radius = int(rng.integers(62, 86))
        w = h = 2 * radius + 2
    else:
        w, h = int(rng.integers(160, 236)), int(rng.integers(112, 170))
    alpha = np.zeros((h, w), np.float32)
    if disc:
        cv2.circle(alpha, (w // 2, h // 2), w // 2 - 1, 1.0, -1, cv2.LINE_AA)
    else:
        r = 14
        cv2.rectangle(alpha, (r, 0), (w - 1 - r, h - 1), 1.0, -1)
        cv2.rectangle(alpha, (0, r), (w - 1, h - 1 - r), 1.0, -1)
        for x, y in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
            cv2.circle(alpha, (x, y), r, 1.0, -1, cv2.LINE_AA)
    return disc, alpha


def _brushed_metal(rng: np.random.Generator, w: int, h: int) -> Image:
    """Brushed metal: a gradient, fine horizontal grain and a tint."""
    base = rng.uniform(150, 200)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    grad = (gx * math.cos(ang) + gy * math.sin(ang)) / max(w, h) * rng.uniform(20, 45)
    grain = cv2.GaussianBlur(
        rng.normal(0, 6, (h, w)).astype(np.float32), (0, 0), sigmaX=4, sigmaY=0.6
    )
    lum = base + grad + grain
    tint = np.array([rng.uniform(0.95, 1.05), 1.0, rng.uniform(0.92, 1.03)], np.float32)
    pixels: Image = np.clip(lum[..., None] * tint, 0, 255).astype(np.uint8)
    return pixels


def _bolt_holes(rng: np.random.Generator, pixels: Image, disc: bool) -> list[tuple[int, int, int]]:
    """Draw the part's bolt holes (x, y, radius) and return them.

    They are dark, round, and not defects: the model must learn to ignore them.
    """
    h, w = pixels.shape[:2]
    holes: list[tuple[int, int, int]] = []
    # A disc always has its centre hole and draws no coin for it: keep the draws in this order.
    if not disc and rng.random() < 0.7:
        hr = int(rng.integers(6, 10))
        for hx, hy in ((hr + 12, hr + 12), (w - hr - 12, h - hr - 12)):
            holes.append((hx, hy, hr))
    elif disc:
        holes.append((w // 2, h // 2, int(rng.integers(10, 18))))
    for hx, hy, hr in holes:
        cv2.circle(pixels, (hx, hy), hr, (40, 40, 42), -1, cv2.LINE_AA)
        cv2.circle(pixels, (hx, hy), hr, (215, 215, 215), 1, cv2.LINE_AA)
    return holes


def _defect_centre(
    rng: np.random.Generator,
    alpha: npt.NDArray[np.float32],
    holes: list[tuple[int, int, int]],
    defects: list[GroundTruth],
) -> tuple[float, float] | None:
    """A spot on the metal clear of holes and other defects, or None after 20 tries."""
    h, w = alpha.shape
    for _attempt in range(20):
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        if alpha[int(cy), int(cx)] < 1.0:
            continue
        if any(math.hypot(cx - hx, cy - hy) < hr + 30 for hx, hy, hr in holes):
            continue
        if any(
            d.box[0] - 20 < cx < d.box[2] + 20 and d.box[1] - 20 < cy < d.box[3] + 20
            for d in defects
        ):
            continue
        return cx, cy
    return None


def _render_part(rng: np.random.Generator, part_id: int, defect_rate: float) -> _Sprite:
    disc, alpha = _part_outline(rng)
    h, w = alpha.shape
    pixels = _brushed_metal(rng, w, h)
    holes = _bolt_holes(rng, pixels, disc)
    defects: list[GroundTruth] = []
    if rng.random() < defect_rate:
        count = 1 if rng.random() < 0.75 else 2
        for _ in range(count):
            name = DEFECT_CLASSES[int(rng.integers(0, len(DEFECT_CLASSES)))]
            centre = _defect_centre(rng, alpha, holes, defects)
            if centre is not None:
                box = _PAINTERS[name](pixels, rng, *centre)
                defects.append(GroundTruth(name, _clip_box(box, w, h), f"{part_id}:{len(defects)}"))
    return _Sprite(part_id, pixels, alpha, tuple(defects))


class _Belt:
    """A belt texture wider than the frame, scrolled as the belt moves."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.period = 160
        tile = rng.normal(58, 7, (height, self.period)).astype(np.float32)
        tile = np.asarray(cv2.GaussianBlur(tile, (0, 0), sigmaX=0.8, sigmaY=3), np.float32)
        tile[:, :3] -= 22  # belt seams
        rows = np.linspace(0, 1, height, dtype=np.float32)[:, None]
        tile += 12 * np.sin(rows * math.pi)  # light falls off towards the belt's edges
        reps = width // self.period + 2
        gray = np.clip(np.tile(tile, (1, reps)), 0, 255).astype(np.uint8)
        self.texture: Image = np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), np.uint8)
        self.width = width

    def view(self, offset: int) -> Image:
        start = offset % self.period
        return self.texture[:, start : start + self.width].copy()


def _paste(frame: Image, sprite: _Sprite, x: int, y: int) -> list[GroundTruth]:
    """Paste a sprite with its top-left at (x, y); return the defects that are visible."""
    height, width = frame.shape[:2]
    sw, sh = sprite.size
    fx1, fy1, fx2, fy2 = max(x, 0), max(y, 0), min(x + sw, width), min(y + sh, height)
    if fx1 >= fx2 or fy1 >= fy2:
        return []
    sx1, sy1 = fx1 - x, fy1 - y
    sx2, sy2 = sx1 + (fx2 - fx1), sy1 + (fy2 - fy1)
    a = sprite.alpha[sy1:sy2, sx1:sx2, None]
    region = frame[fy1:fy2, fx1:fx2].astype(np.float32)
    frame[fy1:fy2, fx1:fx2] = np.clip(
        region * (1 - a) + sprite.pixels[sy1:sy2, sx1:sx2].astype(np.float32) * a, 0, 255
    ).astype(np.uint8)
    visible: list[GroundTruth] = []
    for truth in sprite.defects:
        bx1, by1, bx2, by2 = truth.box
        placed = (bx1 + x, by1 + y, bx2 + x, by2 + y)
        clipped = _clip_box(placed, width, height)
        if _area(placed) > 0 and _area(clipped) / _area(placed) >= 0.6:
            visible.append(GroundTruth(truth.class_name, clipped, truth.key))
    return visible


def _finish(frame: Image, rng: np.random.Generator) -> Image:
    gain = rng.uniform(0.9, 1.1)
    noise = rng.normal(0, 3.0, frame.shape).astype(np.float32)
    return np.clip(frame.astype(np.float32) * gain + noise, 0, 255).astype(np.uint8)


class ConveyorCamera:
    """Frames of parts moving left to right on a belt, deterministic for a given seed."""

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 480,
        seed: int = 0,
        defect_rate: float = 0.35,
        speed: int = 16,
        gap: int = 90,
    ) -> None:
        if width < 320 or height < 240:
            raise ValueError("the synthetic conveyor needs a frame of at least 320x240")
        self._rng = np.random.default_rng(seed)
        self._width, self._height = width, height
        self._defect_rate = defect_rate
        self._speed = speed
        self._gap = gap
        self._belt = _Belt(self._rng, width, height)
        self._offset = 0
        self._ids = itertools.count(1)
        self._parts: list[tuple[_Sprite, float, int]] = []  # sprite, left x, top y

    def _spawn(self) -> None:
        sprite = _render_part(self._rng, next(self._ids), self._defect_rate)
        sw, sh = sprite.size
        top = int(
            self._rng.integers(
                max(0, self._height // 2 - sh // 2 - 40),
                min(self._height - sh, self._height // 2 - sh // 2 + 40) + 1,
            )
        )
        self._parts.append((sprite, -float(sw), top))

    def next_frame(self) -> ConveyorFrame:
        """Advance the belt by one step and render the frame."""
        self._offset -= self._speed
        moved = [(s, x + self._speed, y) for s, x, y in self._parts]
        self._parts = [(s, x, y) for s, x, y in moved if x < self._width]
        leftmost = min((x for _, x, _ in self._parts), default=float(self._width))
        if leftmost > self._gap:
            self._spawn()
        frame = self._belt.view(self._offset)
        truths: list[GroundTruth] = []
        for sprite, x, y in self._parts:
            truths.extend(_paste(frame, sprite, round(x), y))
        return ConveyorFrame(
            _finish(frame, self._rng), tuple(truths), tuple(s.part_id for s, _, _ in self._parts)
        )


def random_scene(
    rng: np.random.Generator, *, width: int = 640, height: int = 480, defect_rate: float = 0.6
) -> ConveyorFrame:
    """One independent training image: a belt with one or two parts anywhere along it."""
    belt = _Belt(rng, width, height)
    frame = belt.view(int(rng.integers(0, 1000)))
    truths: list[GroundTruth] = []
    ids: list[int] = []
    for i in range(1 if rng.random() < 0.7 else 2):
        sprite = _render_part(rng, i + 1, defect_rate)
        sw, sh = sprite.size
        x = int(rng.integers(-sw // 3, width - 2 * sw // 3))
        y = int(
            rng.integers(
                max(0, height // 2 - sh // 2 - 60), min(height - sh, height // 2 - sh // 2 + 60) + 1
            )
        )
        if i == 1:
            x = (x + width // 2) % (width - sw // 2)
        truths.extend(_paste(frame, sprite, x, y))
        ids.append(sprite.part_id)
    return ConveyorFrame(_finish(frame, rng), tuple(truths), tuple(ids))
