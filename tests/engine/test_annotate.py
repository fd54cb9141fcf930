"""Incident pictures show the confirmed defect: its box and label drawn last, bold and readable;
every other detection faint; no label over another. The pictures' pixels are read (issue 15: a
below-threshold `scratch 0.29` was drawn over the confirmed `scratch 0.53 #1` label)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_inspector.annotate import Label, annotate, label_layout
from edge_inspector.config import EngineConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.events import BoundingBox, Detection
from edge_inspector.frames import Image, decode_image
from tests.conftest import jpeg

DEFECT = (32, 32, 200)  # BGR: a defect's box and label
OTHER = (160, 110, 20)  # BGR: a detection that is not a defect
WHITE = (255, 255, 255)
GREY = 100  # the frame's background


def _det(
    class_name: str,
    confidence: float,
    box: tuple[float, float, float, float],
    *,
    defect: bool,
    track_id: int | None = None,
) -> Detection:
    x1, y1, x2, y2 = box
    return Detection(
        class_name=class_name,
        class_id=0,
        confidence=confidence,
        box=BoundingBox(x1=x1, y1=y1, x2=x2, y2=y2),
        track_id=track_id,
        defect=defect,
    )


def _frame(width: int = 320, height: int = 240) -> Image:
    return np.full((height, width, 3), GREY, np.uint8)


def _label_of(labels: tuple[Label, ...], detection: Detection) -> Label:
    (label,) = [lab for lab in labels if lab.detection == detection]
    return label


def _assert_label_intact(picture: Image, label: Label) -> None:
    """Every pixel of the label is its red background, its white text or a blend of the two
    (the text's anti-aliased edge): nothing else was drawn over it."""
    pixels = picture[label.y1 : label.y2, label.x1 : label.x2].reshape(-1, 3).astype(int)
    blue, green, red = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    # on the line from red (32, 32, 200) to white (255, 255, 255): blue == green, and red as far
    # from 200 towards 255 as green is from 32 towards 255
    along = (green - DEFECT[1]) / (WHITE[1] - DEFECT[1])
    stray = (
        (np.abs(blue - green) > 2)
        | (np.abs(red - (DEFECT[2] + along * (WHITE[2] - DEFECT[2]))) > 6)
        | (along < -0.02)
    )
    assert not stray.any(), (
        f"{int(stray.sum())} pixels of the label {label.text!r} are neither its background nor "
        f"its text, e.g. {pixels[stray][:3].tolist()}: something was drawn over it"
    )
    background = np.all(pixels == DEFECT, axis=1).mean()
    text = np.all(pixels == WHITE, axis=1).sum()
    assert background > 0.5, f"the label's background is {DEFECT} on {background:.0%} only"
    assert text > 10, "the label's text is white"


def _text_height(picture: Image, label: Label) -> int:
    """The height in pixels of the label's letters (its white ink)."""
    pixels = picture[label.y1 : label.y2, label.x1 : label.x2]
    rows = np.flatnonzero((pixels.min(axis=2) > 200).any(axis=1))
    return int(rows.max() - rows.min() + 1) if rows.size else 0


# -- issue 15 -------------------------------------------------------------------------------------


def test_a_faint_detection_over_the_confirmed_label_does_not_hide_it() -> None:
    confirmed = _det("scratch", 0.53, (120, 90, 200, 150), defect=True, track_id=1)
    # below the class's threshold, overlapping the confirmed one: its box's top edge runs
    # through the confirmed label, and its own label would go where that one goes
    faint = _det("scratch", 0.29, (110, 80, 230, 170), defect=False)
    frame = _frame()

    labels = label_layout(frame, [confirmed, faint], confirmed=[confirmed])
    picture = annotate(frame, [confirmed, faint], confirmed=[confirmed])

    label = _label_of(labels, confirmed)
    assert label.text == "scratch 0.53 #1"
    assert label.y1 < 80 < label.y2, "the faint box's top edge crosses the confirmed label"
    _assert_label_intact(picture, label)


def test_the_confirmed_box_is_drawn_over_the_faint_one() -> None:
    confirmed = _det("scratch", 0.53, (120, 90, 200, 150), defect=True, track_id=1)
    faint = _det("scratch", 0.29, (120, 90, 230, 170), defect=False)  # shares a corner and edges

    picture = annotate(_frame(), [confirmed, faint], confirmed=[confirmed])

    assert tuple(picture[120, 120]) == DEFECT, "the shared left edge shows the confirmed colour"
    assert tuple(picture[150, 160]) == DEFECT, "so does its bottom edge, across the faint box"


# -- faint context ------------------------------------------------------------------------------


def test_detections_that_are_not_the_incidents_are_fainter_than_its_own() -> None:
    confirmed = _det("scratch", 0.53, (40, 60, 110, 130), defect=True, track_id=1)
    other_defect = _det("dent", 0.8, (160, 60, 230, 130), defect=True, track_id=2)
    not_defect = _det("scratch", 0.29, (250, 60, 310, 130), defect=False)
    detections = [confirmed, other_defect, not_defect]

    picture = annotate(_frame(), detections, confirmed=[confirmed]).astype(int)

    def edge(x: int) -> tuple[int, int]:
        """How far the box's left edge, at mid-height, is from the background, and how many
        columns it is thick."""
        row = np.abs(picture[95] - GREY).sum(axis=1)
        thick = 0
        while row[x + thick] > 0 or row[x - 1 - thick] > 0:
            thick += 1
        return int(row[x]), thick

    strong, strong_thickness = edge(40)
    assert strong == np.abs(np.array(DEFECT) - GREY).sum(), "the confirmed box: its full colour"
    for box, what in ((other_defect, "another defect"), (not_defect, "a below-threshold one")):
        faint, thickness = edge(round(box.box.x1))
        assert 0 < faint < strong * 0.6, f"{what}: blended into the frame ({faint} vs {strong})"
        assert thickness <= strong_thickness, f"{what}: no thicker than the confirmed box"


def test_without_confirmed_ones_every_defect_stands_out_as_on_the_live_view() -> None:
    defect = _det("dent", 0.8, (40, 60, 110, 130), defect=True, track_id=2)
    not_defect = _det("scratch", 0.29, (160, 60, 230, 130), defect=False)

    picture = annotate(_frame(), [defect, not_defect])

    assert tuple(picture[95, 40]) == DEFECT
    faint = picture[95, 160].astype(int)
    assert np.all(np.abs(faint - GREY) < np.abs(np.array(OTHER) - GREY)), (
        f"what is not a defect stays faint: {faint.tolist()}"
    )
    (label, *_) = label_layout(_frame(), [defect, not_defect])
    assert label.detection == defect and label.highlighted
    _assert_label_intact(picture, label)


def test_a_confirmed_detection_missing_from_the_frames_is_still_drawn() -> None:
    confirmed = _det("crack", 0.7, (40, 60, 110, 130), defect=True)

    picture = annotate(_frame(), [], confirmed=[confirmed])

    assert tuple(picture[95, 40]) == DEFECT


# -- where labels go ----------------------------------------------------------------------------


def test_a_label_goes_above_its_box_else_below_else_inside() -> None:
    frame = _frame()
    middle = _det("spot", 0.6, (100, 100, 160, 140), defect=True)
    top = _det("spot", 0.6, (100, 0, 160, 40), defect=True)
    tall = _det("spot", 0.6, (100, 0, 160, 240), defect=True)

    (above,) = label_layout(frame, [middle])
    (below,) = label_layout(frame, [top])
    (inside,) = label_layout(frame, [tall])

    assert above.y2 <= 100 and above.x1 == 100
    assert below.y1 > 40
    assert inside.y1 > 0 and inside.y2 < 240 and inside.x1 == 100


def test_crowded_labels_never_overlap_and_stay_inside_the_picture() -> None:
    frame = _frame()
    confirmed = [
        _det("scratch", 0.53, (120, 90, 200, 150), defect=True, track_id=1),
        _det("scratch", 0.61, (125, 92, 205, 155), defect=True, track_id=2),
        _det("dent", 0.44, (300, 0, 320, 30), defect=True, track_id=3),  # at the top right corner
    ]
    context = [
        _det("scratch", 0.29, (110, 80, 230, 170), defect=False),
        _det("scratch", 0.31, (118, 88, 210, 160), defect=False),
        _det("crack", 0.9, (0, 200, 60, 240), defect=True, track_id=9),  # another incident's
    ]
    detections = context + confirmed

    labels = label_layout(frame, detections, confirmed=confirmed)
    picture = annotate(frame, detections, confirmed=confirmed)

    assert {lab.detection for lab in labels if lab.highlighted} == set(confirmed)
    for a, b in combinations(labels, 2):
        assert not a.intersects(b), f"{a.text!r} at {a} overlaps {b.text!r} at {b}"
    for lab in labels:
        assert 0 <= lab.x1 < lab.x2 <= 320 and 0 <= lab.y1 < lab.y2 <= 240, f"{lab} is outside"
    for lab in labels:
        if lab.highlighted:
            _assert_label_intact(picture, lab)


@st.composite
def _scenes(draw: st.DrawFn) -> tuple[list[Detection], list[Detection]]:
    """Up to five detections anywhere on a 320x240 frame (room for five labels in any layout),
    and which of them are the incident's."""
    detections = []
    for _ in range(draw(st.integers(1, 5))):
        x1, y1 = draw(st.integers(0, 310)), draw(st.integers(0, 230))
        x2, y2 = draw(st.integers(x1 + 1, 320)), draw(st.integers(y1 + 1, 240))
        detections.append(
            _det(
                draw(st.sampled_from(("scratch", "dent", "crack", "spot"))),
                draw(st.floats(0.05, 1.0)),
                (x1, y1, x2, y2),
                defect=draw(st.booleans()),
                track_id=draw(st.none() | st.integers(1, 999)),
            )
        )
    confirmed = [d for d in detections if draw(st.booleans())]
    return detections, confirmed


@settings(max_examples=150, deadline=None)
@given(_scenes())
def test_any_labels_keep_apart_inside_the_picture_with_the_confirmed_on_top(
    scene: tuple[list[Detection], list[Detection]],
) -> None:
    detections, confirmed = scene
    frame = _frame()

    labels = label_layout(frame, detections, confirmed=confirmed)
    picture = annotate(frame, detections, confirmed=confirmed)

    highlighted = {d for d in confirmed if d.defect}
    assert {lab.detection for lab in labels if lab.highlighted} == highlighted
    for a, b in combinations(labels, 2):
        assert not a.intersects(b), f"{a.text!r} at {a} overlaps {b.text!r} at {b}"
    for lab in labels:
        assert 0 <= lab.x1 < lab.x2 <= 320 and 0 <= lab.y1 < lab.y2 <= 240, f"{lab} is outside"
        if lab.highlighted:
            _assert_label_intact(picture, lab)


@pytest.mark.parametrize(("width", "height", "least"), [(320, 240, 11), (1920, 1080, 22)])
def test_labels_read_on_small_and_large_pictures(width: int, height: int, least: int) -> None:
    confirmed = _det(
        "scratch",
        0.53,
        (width * 0.4, height * 0.4, width * 0.6, height * 0.6),
        defect=True,
        track_id=1,
    )
    frame = _frame(width, height)

    (label,) = label_layout(frame, [confirmed], confirmed=[confirmed])
    picture = annotate(frame, [confirmed], confirmed=[confirmed])

    assert _text_height(picture, label) >= least, f"letters {least} px high at least"
    _assert_label_intact(picture, label)


def test_a_picture_scaled_down_keeps_its_labels_readable() -> None:
    confirmed = _det("scratch", 0.53, (800, 400, 1100, 600), defect=True, track_id=1)
    frame = _frame(1920, 1080)

    picture = annotate(frame, [confirmed], confirmed=[confirmed], max_width=480)
    (label,) = label_layout(frame, [confirmed], confirmed=[confirmed], max_width=480)

    assert picture.shape == (270, 480, 3)
    assert label.x1 == 200 and label.y2 <= 100, "where the box is on the smaller picture"
    assert _text_height(picture, label) >= 11
    _assert_label_intact(picture, label)


# -- the station's incident pictures ------------------------------------------------------------


async def test_each_incidents_picture_highlights_its_own_defects(
    make_config: Callable[..., EngineConfig], defect_scenes: list[ConveyorFrame]
) -> None:
    config = make_config("""
        - id: press
          name: Press 2
          mode: triggered
          source: {type: push}
          model: {path: MODEL, imgsz: 320}
          defects: {scratch: 0.3, dent: 0.3, crack: 0.3, spot: 0.3}
        """)
    async with Engine(config) as engine:
        for scene in (s for s in defect_scenes if len({t.class_name for t in s.truths}) > 1):
            result = await engine.stations["press"].inspect_image(jpeg(scene.image))
            if len(result.new_incident_ids) > 1:
                break
        else:
            pytest.fail("the demo model should find two classes of defect on one part")
        async with asyncio.timeout(10):  # stored by the station's output worker, just after
            while None in (
                incidents := [await engine.store.incident(i) for i in result.new_incident_ids]
            ):
                await asyncio.sleep(0.02)
        for incident in incidents:
            assert incident is not None and incident.frame_path and incident.raw_path
            stored = engine.store.image_file(incident.frame_path)
            raw = engine.store.image_file(incident.raw_path)
            assert stored is not None and raw is not None
            shown = decode_image(stored.read_bytes()).astype(int)
            camera = decode_image(raw.read_bytes())
            wanted = annotate(camera, result.detections, confirmed=incident.detections)
            every_defect = annotate(camera, result.detections)
            # equal but for JPEG's losses where both drawings agree; nearer where they differ
            assert np.abs(shown - wanted).sum() < np.abs(shown - every_defect).sum(), (
                f"the {incident.defect_class} incident's picture highlights other defects too"
            )
