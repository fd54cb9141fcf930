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


_MAX_WH = 7680  # Ultralytics' per-class box offset for class-aware NMS
_GREEDY_LIMIT = 256  # more candidates than this go to torchvision's NMS (a C++ loop)
_LETTERBOX_SIZES = 32  # frame sizes whose letterbox is kept


@dataclass(frozen=True, slots=True)
class _Letterbox:
    """Where a frame of one size lands in the model's input, as Ultralytics' LetterBox puts it."""

    height: int  # the model input's size
    width: int
    new_width: int  # the frame, resized
    new_height: int
    top: int
    left: int


def _size(frame: Image) -> str:
    return "x".join(map(str, frame.shape))


class _DirectPredictor:
    """Ultralytics' own steps for a batch of frames (letterbox, the runtime's forward pass,
    non-maximum suppression, boxes back to frame pixels), called directly.

    `YOLO.predict` wraps the same steps in per-call machinery: a data loader built for every
    call, a generator, callbacks, profilers and a `Results` object per frame. On the demo model
    at 320 px on two cores that is about a millisecond a frame, a tenth of the model's time,
    and the line pays it for nothing. The forward pass is the predictor's own, set up by one
    `predict` call, so the device, half precision and every runtime Ultralytics runs (PyTorch,
    ONNX Runtime, OpenVINO, TensorRT) are as `predict` has them; a test checks that both give
    the same boxes.

    On the CPU the steps around the forward pass are done in fewer, larger native calls:
    the letterbox straight into the model's input (one resize into a padded canvas and one
    `blobFromImages` for the channel swap, layout and scaling, where Ultralytics takes six
    tensor operations) and NMS in NumPy for the few candidates a frame has (torchvision's for
    many). They run just after the model, while its thread team is still spinning on both
    cores, where every operation costs several times what it does alone: measured on the demo
    model (OpenVINO, two cores), 0.64-0.79 ms for Ultralytics' preprocess and 0.62-0.72 ms for
    its NMS a frame, against 0.44 and 0.17 ms when timed on their own. The letterbox of each
    frame size is checked once against Ultralytics' own; where they differ, its own is used.
    """

    def __init__(self, predictor: Any) -> None:
        import torch
        from ultralytics.utils import nms, ops

        self._predictor = predictor
        self._torch = torch
        self._nms = nms.non_max_suppression
        self._scale_boxes = ops.scale_boxes  # NumPy boxes too: to frame pixels, clipped
        device = str(getattr(predictor, "device", "cpu"))
        self._cuda = device.startswith("cuda")
        self._cpu = device == "cpu"
        args = predictor.args
        self._iou = float(args.iou)
        self._max_det = int(args.max_det)
        self._agnostic = bool(args.agnostic_nms)
        self._end2end = bool(getattr(predictor.model, "end2end", False))
        self._fp16 = bool(getattr(predictor.model, "fp16", False))
        self._classes = len(getattr(predictor.model, "names", None) or ())
        # frame shape -> its letterbox, or None where Ultralytics' own preprocess must run
        self._letterboxes: dict[tuple[tuple[int, ...], str], _Letterbox | None] = {}

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

    # -- before the model -------------------------------------------------------------------

    def _letterbox(self, frame: Image) -> _Letterbox | None:
        key = (frame.shape, frame.dtype.str)
        if key in self._letterboxes:
            return self._letterboxes[key]
        box = None
        if (
            self._cpu
            and not self._fp16
            and frame.ndim == 3
            and frame.shape[2] == 3
            and frame.dtype == np.uint8
        ):
            try:
                box = self._checked(frame)
            except Exception as exc:  # whatever breaks here, Ultralytics' own steps run
                _LOGGER.info("frames of %s: Ultralytics' letterbox (%s)", _size(frame), exc)
                box = None
        if len(self._letterboxes) >= _LETTERBOX_SIZES:  # pushed pictures of any size
            del self._letterboxes[next(iter(self._letterboxes))]
        self._letterboxes[key] = box
        return box

    def _checked(self, frame: Image) -> _Letterbox | None:
        """Our letterbox for this frame size, if it gives exactly Ultralytics' input for a
        frame of that size with a different pattern in each channel (not the frame itself: a
        grey or blank one could not tell a channel swap)."""
        box = self._geometry(frame)
        if box is None:
            return None
        pattern = np.random.default_rng(0).integers(0, 256, frame.shape, dtype=np.uint8)
        expected = self._predictor.preprocess([pattern]).numpy()
        got = self._blob([pattern], box)
        if got.shape != expected.shape or not np.array_equal(got, expected):
            _LOGGER.info(
                "frames of %s: Ultralytics' letterbox differs from ours; using its own",
                _size(frame),
            )
            return None
        return box

    def _geometry(self, frame: Image) -> _Letterbox | None:
        predictor = self._predictor
        if getattr(predictor, "scale_fill", False):
            return None
        size = predictor.imgsz
        target_h, target_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        # the input's size (a square, or the smallest stride multiple around the frame) as
        # Ultralytics' own letterbox makes it for this frame size
        height, width = predictor.pre_transform([np.zeros_like(frame)])[0].shape[:2]
        h, w = frame.shape[:2]
        ratio = min(target_h / h, target_w / w)
        new_w, new_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
        if new_w > width or new_h > height:
            return None
        top, left = round((height - new_h) / 2 - 0.1), round((width - new_w) / 2 - 0.1)
        return _Letterbox(height, width, new_w, new_h, top, left)

    @staticmethod
    def _blob(frames: Sequence[Image], box: _Letterbox) -> npt.NDArray[np.float32]:
        import cv2

        canvases = []
        for frame in frames:
            canvas = np.full((box.height, box.width, 3), 114, np.uint8)
            inner = canvas[box.top : box.top + box.new_height, box.left : box.left + box.new_width]
            if frame.shape[:2] == inner.shape[:2]:
                inner[...] = frame
            else:
                resized = cv2.resize(
                    frame, (box.new_width, box.new_height), interpolation=cv2.INTER_LINEAR
                )
                inner[...] = resized
            canvases.append(canvas)
        blob = np.asarray(cv2.dnn.blobFromImages(canvases, swapRB=True), dtype=np.float32)
        # divided as Ultralytics divides (a float32 division by 255: the same bits, where a
        # multiplication by 1/255 is one unit in the last place off for half the values)
        np.divide(blob, np.float32(255), out=blob)
        return blob

    def _preprocess(self, frames: list[Image]) -> Any:
        first = frames[0]
        box = self._letterbox(first)
        if box is None or any(f.shape != first.shape or f.dtype != first.dtype for f in frames):
            return self._predictor.preprocess(frames)
        return self._torch.from_numpy(self._blob(frames, box))

    # -- after the model --------------------------------------------------------------------

    def _suppress(self, preds: Any, conf: float) -> list[npt.NDArray[np.float32]]:
        """Per frame, rows of x1, y1, x2, y2, confidence, class in the model input's pixels."""
        out = preds[0] if isinstance(preds, (list, tuple)) else preds
        torch = self._torch
        if (
            isinstance(out, torch.Tensor)
            and out.device.type == "cpu"
            and not self._end2end
            and out.ndim == 3
            and out.shape[1] == 4 + self._classes
        ):
            rows = []
            for index, array in enumerate(out.float().numpy()):
                row = self._greedy(array, conf)
                # a frame with many candidates: torchvision's NMS, for that frame only
                rows.append(
                    row if row is not None else self._torchvision(out[index : index + 1], conf)[0]
                )
            return rows
        return self._torchvision(preds, conf)

    def _torchvision(self, preds: Any, conf: float) -> list[npt.NDArray[np.float32]]:
        """Ultralytics' own NMS (torchvision's), rows as `_suppress` gives them."""
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
        return [k[:, :6].float().cpu().numpy() for k in kept]

    def _greedy(self, pred: npt.NDArray[np.float32], conf: float) -> npt.NDArray[np.float32] | None:
        """Ultralytics' NMS for one frame's (4 + classes, anchors) output, in NumPy: the best
        class of each anchor above `conf`, greedy suppression above the IoU threshold within a
        class. None when there are too many candidates for a Python loop."""
        scores = pred[4:]
        best = scores.max(axis=0)
        candidates = np.flatnonzero(best > conf)
        if candidates.size > _GREEDY_LIMIT:
            return None
        if not candidates.size:
            return np.zeros((0, 6), np.float32)
        score = best[candidates]
        cls = scores[:, candidates].argmax(axis=0).astype(np.float32)
        cx, cy, w, h = pred[:4, candidates]
        boxes = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=1)
        shifted = boxes if self._agnostic else boxes + (cls * _MAX_WH)[:, None]
        areas = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
        order = np.argsort(-score, kind="stable")
        keep: list[int] = []
        while order.size and len(keep) < self._max_det:
            first, rest = int(order[0]), order[1:]
            keep.append(first)
            a, b = shifted[first], shifted[rest]
            width = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
            height = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
            inter = width * height
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (areas[first] + areas[rest] - inter)
            # as torchvision: suppressed above the threshold compared in double precision; a
            # NaN (two boxes of no area) suppresses nothing
            order = rest[~(iou.astype(np.float64) > self._iou)]
        kept = np.asarray(keep)
        return np.concatenate(
            (boxes[kept], score[kept, None], cls[kept, None]), axis=1, dtype=np.float32
        )

    def __call__(self, images: Sequence[Image], conf: float) -> list[RawDetections]:
        predictor, torch = self._predictor, self._torch
        frames = list(images)
        count = len(frames)
        with torch.inference_mode():
            started = time.perf_counter()
            batch = self._preprocess(frames)
            preprocessed = time.perf_counter()
            preds = predictor.inference(batch)
            if self._cuda:
                torch.cuda.synchronize()
            inferred = time.perf_counter()
            kept = self._suppress(preds, conf)
            shape = tuple(batch.shape[2:])
            out = [
                (
                    np.asarray(
                        self._scale_boxes(shape, rows[:, :4].copy(), frame.shape), np.float32
                    ),
                    rows,
                )
                for rows, frame in zip(kept, frames, strict=True)
            ]
            done = time.perf_counter()
        pre, inf, post = (
            (preprocessed - started) * 1000 / count,
            (inferred - preprocessed) * 1000 / count,
            (done - inferred) * 1000 / count,
        )
        return [
            RawDetections(
                boxes=boxes,
                confidences=rows[:, 4].astype(np.float32),
                class_ids=rows[:, 5].astype(np.int64),
                preprocess_ms=pre,
                inference_ms=inf,
                postprocess_ms=post,
            )
            for boxes, rows in out
        ]
