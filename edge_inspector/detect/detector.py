"""Ultralytics YOLO, in-process: load any format it reads and run batches of frames."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
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
        source: Path | None = None,
    ) -> None:
        """`source`: the model `path` was exported from (`runtime: auto`); results name it,
        with the runtime, so an incident says which model found it whatever ran it."""
        self.path = path
        self.source = source or path
        self.imgsz = imgsz
        self.device = device
        self.half = half
        self.backend = model_backend(path)
        self._cache_dir = cache_dir
        self._model: Any = None
        self._names: dict[int, str] = {}
        self._info: ModelInfo | None = None
        self._predictor: _DirectPredictor | None = None
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
            # One call through Ultralytics' own `predict` sets up its predictor (device, half,
            # letterbox, the runtime's backend); every later frame goes the direct way.
            model.predict(
                np.zeros((self.imgsz, self.imgsz, 3), np.uint8),
                imgsz=self.imgsz,
                conf=0.5,
                device=self.device,
                half=self.half,
                verbose=False,
            )
            self._predictor = _DirectPredictor.of(model)
            self._predict([np.zeros((self.imgsz, self.imgsz, 3), np.uint8)], conf=0.5)
        except ModelError:
            raise
        except Exception as exc:
            self._model = None
            self._predictor = None
            raise ModelError(
                f"{self.path}: cannot load the model: {type(exc).__name__}: {exc}"
            ) from exc
        self._info = ModelInfo(
            name=self.source.name, sha256=model_sha256(self.source), runtime=self.backend
        )
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
        if self._predictor is not None:
            return self._predictor(images, conf)
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


class _DirectPredictor:
    """Ultralytics' own steps for a batch of frames (letterbox, the runtime's forward pass,
    non-maximum suppression, boxes back to frame pixels), called directly.

    `YOLO.predict` wraps the same steps in per-call machinery: a data loader built for every
    call, a generator, callbacks, profilers and a `Results` object per frame. On the demo model
    at 320 px on two cores that is about a millisecond a frame, a tenth of the model's time,
    and the line pays it for nothing. The steps are the predictor's own methods, set up by one
    `predict` call, so the letterbox, the device, half precision and every runtime Ultralytics
    runs (PyTorch, ONNX Runtime, OpenVINO, TensorRT) are as `predict` has them; a test checks
    that both give the same boxes.
    """

    def __init__(self, predictor: Any) -> None:
        import torch
        from ultralytics.utils import nms, ops

        self._predictor = predictor
        self._torch = torch
        self._nms = nms.non_max_suppression
        self._scale_boxes = ops.scale_boxes
        self._cuda = str(getattr(predictor, "device", "cpu")).startswith("cuda")
        args = predictor.args
        self._iou = float(args.iou)
        self._max_det = int(args.max_det)
        self._agnostic = bool(args.agnostic_nms)
        self._end2end = bool(getattr(predictor.model, "end2end", False))

    @classmethod
    def of(cls, model: Any) -> _DirectPredictor | None:
        """The direct path for a detection model's predictor, or None (then `predict` runs)."""
        predictor = getattr(model, "predictor", None)
        needed = ("preprocess", "inference", "pre_transform", "args", "model")
        if predictor is None or not all(hasattr(predictor, name) for name in needed):
            return None
        try:
            return cls(predictor)
        except (ImportError, AttributeError) as exc:  # another Ultralytics: its own path
            _LOGGER.info("predicting through Ultralytics' predict (%s)", exc)
            return None

    def __call__(self, images: Sequence[Image], conf: float) -> list[RawDetections]:
        predictor, torch = self._predictor, self._torch
        frames = list(images)
        count = len(frames)
        with torch.inference_mode():
            started = time.perf_counter()
            batch = predictor.preprocess(frames)
            preprocessed = time.perf_counter()
            preds = predictor.inference(batch)
            if self._cuda:
                torch.cuda.synchronize()
            inferred = time.perf_counter()
            kept = self._nms(
                preds,
                conf,
                self._iou,
                None,
                self._agnostic,
                max_det=self._max_det,
                nc=0,
                end2end=self._end2end,
            )
            shape = batch.shape[2:]
            out = []
            for det, frame in zip(kept, frames, strict=True):
                boxes = self._scale_boxes(shape, det[:, :4], frame.shape).cpu().numpy()
                rows = det[:, 4:6].cpu().numpy()
                out.append((boxes, rows))
            done = time.perf_counter()
        pre, inf, post = (
            (preprocessed - started) * 1000 / count,
            (inferred - preprocessed) * 1000 / count,
            (done - inferred) * 1000 / count,
        )
        return [
            RawDetections(
                boxes=boxes.astype(np.float32, copy=False),
                confidences=rows[:, 0].astype(np.float32),
                class_ids=rows[:, 1].astype(np.int64),
                preprocess_ms=pre,
                inference_ms=inf,
                postprocess_ms=post,
            )
            for boxes, rows in out
        ]
