"""Ultralytics YOLO, in-process: load any format it reads and run batches of frames."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from ..events import ModelInfo
from ..frames import Image
from .runtime import prepare_ultralytics, use_threads_for

__all__ = ["RawDetections", "YoloDetector", "model_backend", "model_sha256"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawDetections:
    """What the model returned for one frame, before any station rule."""

    boxes: npt.NDArray[np.float32]  # (N, 4) x1, y1, x2, y2 in frame pixels
    confidences: npt.NDArray[np.float32]  # (N,)
    class_ids: npt.NDArray[np.int64]  # (N,)
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    def __len__(self) -> int:
        return len(self.confidences)


def model_backend(path: Path) -> str:
    """Which runtime Ultralytics will use for a model file or folder."""
    name = path.name.lower()
    if path.is_dir() and name.endswith("_openvino_model"):
        return "openvino"
    suffix = path.suffix.lower()
    return {
        ".pt": "pytorch",
        ".yaml": "pytorch",
        ".yml": "pytorch",
        ".onnx": "onnx",
        ".engine": "tensorrt",
        ".torchscript": "torchscript",
        ".xml": "openvino",
    }.get(suffix, "other")


def model_sha256(path: Path) -> str:
    """SHA-256 of a model file, or of every file of a model folder in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class YoloDetector:
    """One YOLO model. `predict` is blocking and not re-entrant: call it from one thread."""

    def __init__(
        self,
        path: Path,
        *,
        imgsz: int = 640,
        device: str = "cpu",
        half: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.imgsz = imgsz
        self.device = device
        self.half = half
        self.backend = model_backend(path)
        self._cache_dir = cache_dir
        self._model: Any = None
        self._names: dict[int, str] = {}
        self._info: ModelInfo | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model and run one warm-up frame (blocking; call in an executor)."""
        if self._model is not None:
            return
        if not self.path.exists():
            raise ModelError(f"{self.path}: model file not found")
        prepare_ultralytics(self._cache_dir)
        use_threads_for(self.backend)
        try:
            from ultralytics import YOLO

            model = YOLO(str(self.path), task="detect")
            self._model = model
            names = model.names
            self._names = {
                int(k): str(v)
                for k, v in (names.items() if isinstance(names, dict) else enumerate(names))
            }
            self._predict([np.zeros((self.imgsz, self.imgsz, 3), np.uint8)], conf=0.5)
        except ModelError:
            raise
        except Exception as exc:
            self._model = None
            raise ModelError(
                f"{self.path}: cannot load the model: {type(exc).__name__}: {exc}"
            ) from exc
        self._info = ModelInfo(name=self.path.name, sha256=model_sha256(self.path))
        _LOGGER.info(
            "loaded %s (%s, %d classes, imgsz %d)",
            self.path.name,
            self.backend,
            len(self._names),
            self.imgsz,
        )

    @property
    def names(self) -> dict[int, str]:
        """Class id to class name."""
        self._require()
        return self._names

    @property
    def info(self) -> ModelInfo:
        self._require()
        assert self._info is not None
        return self._info

    def _require(self) -> None:
        if self._model is None:
            raise ModelError(f"{self.path}: model not loaded")

    def predict(self, images: Sequence[Image], *, conf: float) -> list[RawDetections]:
        """Detect objects in a batch of BGR frames (blocking)."""
        self._require()
        with self._lock:
            try:
                return self._predict(images, conf=conf)
            except Exception as exc:
                raise ModelError(
                    f"{self.path.name}: inference failed: {type(exc).__name__}: {exc}"
                ) from exc

    def _predict(self, images: Sequence[Image], *, conf: float) -> list[RawDetections]:
        results = self._model.predict(
            list(images),
            imgsz=self.imgsz,
            conf=conf,
            device=self.device,
            half=self.half,
            verbose=False,
            batch=len(images),
        )
        out = []
        for result in results:
            boxes = result.boxes
            speed = result.speed or {}
            out.append(
                RawDetections(
                    boxes=boxes.xyxy.cpu().numpy().astype(np.float32),
                    confidences=boxes.conf.cpu().numpy().astype(np.float32),
                    class_ids=boxes.cls.cpu().numpy().astype(np.int64),
                    preprocess_ms=float(speed.get("preprocess") or 0.0),
                    inference_ms=float(speed.get("inference") or 0.0),
                    postprocess_ms=float(speed.get("postprocess") or 0.0),
                )
            )
        return out
