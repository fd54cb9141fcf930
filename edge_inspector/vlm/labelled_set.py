"""Labelled incident images for `edge-inspector vlm eval`: the format, read and checked.

A labelled set is a folder of images with a `labels.json` (or `labels.yaml`):

    {
      "station": {"id": "conveyor_1", "name": "Conveyor 1", "product": "brushed steel plate",
                  "line": "demo line", "defects": ["scratch", "dent", "crack", "spot"]},
      "images": [
        {"file": "01-scratch.jpg", "defect": "scratch", "severity": "medium",
         "detector": {"class": "scratch", "confidence": 0.76, "box": [104, 278, 156, 339]}},
        {"file": "02-clean.jpg", "defect": null, "note": "a bolt hole taken for a spot",
         "detector": {"class": "spot", "confidence": 0.52, "box": [617, 224, 634, 241]}}
      ]
    }

Per image: `file` (relative to the folder), `defect` (the true class; null or "none" when the
part has no defect), `severity` (low, medium, high or critical; optional, only with a defect),
`detector` (the detector's call that made it an incident: class, confidence 0-1, box x1, y1,
x2, y2 in image pixels; on a clean image it is the false alarm the detector raised) and an
optional `note`. `station` (optional) says what the station is: id, name, product, line and the
defect classes it knows (default: the classes the labels use). An image that cannot be used (a
missing or unreadable file, a class the station does not know, a malformed entry) is skipped,
with the reason, and counted; a missing or unparsable labels file is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import StationConfig
from ..errors import ConfigError, ImageDecodeError
from ..events import Severity
from ..frames import decode_image

__all__ = [
    "LABEL_FILES",
    "NONE",
    "DetectorCall",
    "LabelledImage",
    "LabelledSet",
    "LabelledSetError",
    "SkippedImage",
    "StationContext",
    "load_labelled_set",
    "problem_of",
]

LABEL_FILES = ("labels.json", "labels.yaml", "labels.yml")
NONE = "none"  # the label of an image without a defect


class LabelledSetError(ConfigError):
    """The labelled set cannot be used at all (no folder, no labels file, no usable image)."""


class _Label(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DetectorCall(_Label):
    """The detector's call that made the image an incident."""

    class_name: Annotated[str, Field(alias="class", min_length=1)]
    confidence: Annotated[float, Field(ge=0, le=1)]
    box: tuple[float, float, float, float]

    @model_validator(mode="after")
    def _box_order(self) -> Self:
        x1, y1, x2, y2 = self.box
        if min(x1, y1) < 0 or x2 <= x1 or y2 <= y1:
            raise ValueError("box must be [x1, y1, x2, y2] with 0 <= x1 < x2 and 0 <= y1 < y2")
        return self


class LabelledImage(_Label):
    """One image of the set: its file, the truth, and the detector's call."""

    file: Annotated[str, Field(min_length=1)]
    defect: str | None
    severity: Severity | None = None
    detector: DetectorCall
    note: str | None = None

    @field_validator("defect", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in (NONE, "") else value

    @model_validator(mode="after")
    def _severity_needs_defect(self) -> Self:
        if self.defect is None and self.severity is not None:
            raise ValueError("an image without a defect has no severity")
        return self

    @property
    def truth(self) -> str:
        return self.defect or NONE


class StationContext(_Label):
    """What the labels say about the station the images come from."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,62}$")] = "eval"
    name: Annotated[str, Field(min_length=1, max_length=100)] = "Labelled set"
    product: str | None = None
    line: str | None = None
    defects: tuple[str, ...] = ()


class _LabelsFile(_Label):
    description: str | None = None
    station: StationContext | None = None
    images: list[Any]


@dataclass(frozen=True, slots=True)
class SkippedImage:
    file: str
    reason: str


@dataclass(frozen=True, slots=True)
class LabelledSet:
    """The usable images of a set, and the ones skipped with their reasons."""

    folder: Path
    labels_file: Path
    station: StationContext | None
    images: tuple[LabelledImage, ...]
    skipped: tuple[SkippedImage, ...] = ()

    def classes(self) -> list[str]:
        """The station's classes, or else those the labels use."""
        if self.station is not None and self.station.defects:
            return list(self.station.defects)
        used = {i.defect for i in self.images if i.defect} | {
            i.detector.class_name for i in self.images
        }
        return sorted(c for c in used if c)

    def for_station(self, station: StationConfig) -> LabelledSet:
        """The set with the images whose classes `station` does not know moved to skipped."""
        known = set(station.defects)
        keep: list[LabelledImage] = []
        skipped = list(self.skipped)
        for image in self.images:
            unknown = [c for c in (image.defect, image.detector.class_name) if c and c not in known]
            if unknown:
                skipped.append(
                    SkippedImage(
                        image.file,
                        f"unknown class {unknown[0]!r} (station {station.id} knows: "
                        f"{', '.join(station.defects)})",
                    )
                )
            else:
                keep.append(image)
        if not keep:
            raise LabelledSetError(f"{self.labels_file}: {_nothing_usable(skipped)}")
        return LabelledSet(self.folder, self.labels_file, self.station, tuple(keep), tuple(skipped))


def _nothing_usable(skipped: Sequence[SkippedImage]) -> str:
    reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:5])
    return f"no usable labelled image ({len(skipped)} skipped: {reasons})"


def _read_labels(folder: Path) -> tuple[Path, Any]:
    if not folder.is_dir():
        raise LabelledSetError(f"{folder}: no such folder")
    path = next((folder / n for n in LABEL_FILES if (folder / n).is_file()), None)
    if path is None:
        raise LabelledSetError(f"{folder}: no labels.json (or labels.yaml) in this folder")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelledSetError(f"{path}: cannot read it: {exc}") from None
    try:
        if path.suffix == ".json":
            return path, json.loads(text)
        return path, yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise LabelledSetError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    except yaml.YAMLError as exc:
        raise LabelledSetError(f"{path}: not valid YAML: {exc}") from None


def problem_of(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _check_image(folder: Path, label: LabelledImage) -> str | None:
    """Why the image cannot be used, or None."""
    path = folder / label.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    try:
        image = decode_image(data, origin=label.file)
    except ImageDecodeError as exc:
        return str(exc).removeprefix(f"{label.file}: ")
    height, width = image.shape[:2]
    x1, y1, x2, y2 = label.detector.box
    if x1 >= width or y1 >= height or x2 > width + 1 or y2 > height + 1:
        return f"detector box {list(label.detector.box)} is outside the {width}x{height} image"
    return None


def load_labelled_set(folder: Path) -> LabelledSet:
    """Read and check a labelled set; LabelledSetError when nothing in it can be used."""
    path, data = _read_labels(folder)
    try:
        labels = _LabelsFile.model_validate(data)
    except ValidationError as exc:
        raise LabelledSetError(f"{path}: {problem_of(exc)}") from None
    images: list[LabelledImage] = []
    skipped: list[SkippedImage] = []
    seen: set[str] = set()
    for i, entry in enumerate(labels.images):
        name = entry.get("file") if isinstance(entry, Mapping) else None
        where = str(name) if isinstance(name, str) and name else f"images[{i}]"
        try:
            label = LabelledImage.model_validate(entry)
        except ValidationError as exc:
            skipped.append(SkippedImage(where, f"bad label: {problem_of(exc)}"))
            continue
        if label.file in seen:
            skipped.append(SkippedImage(where, "listed twice"))
            continue
        seen.add(label.file)
        reason = _check_image(folder, label)
        if reason is not None:
            skipped.append(SkippedImage(where, reason))
            continue
        images.append(label)
    if not images:
        raise LabelledSetError(f"{path}: {_nothing_usable(skipped)}")
    return LabelledSet(folder, path, labels.station, tuple(images), tuple(skipped))
