"""Any format Ultralytics loads: the demo model as PyTorch, ONNX and OpenVINO agrees."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.detect import detector as detector_module
from edge_inspector.detect.detector import YoloDetector, model_backend
from edge_inspector.detect.runtime import prepare_ultralytics, use_threads_for


@pytest.fixture(scope="module")
def exported(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    prepare_ultralytics()
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("exported")
    copy = folder / demo_model.name
    copy.write_bytes(demo_model.read_bytes())
    model = YOLO(str(copy), task="detect")
    return {
        "onnx": Path(model.export(format="onnx", imgsz=320, verbose=False)),
        "openvino": Path(model.export(format="openvino", imgsz=320, verbose=False)),
    }


def _classes(detector: YoloDetector, scenes: list[ConveyorFrame]) -> list[set[str]]:
    results = detector.predict([s.image for s in scenes], conf=0.4)
    return [{detector.names[int(c)] for c in r.class_ids} for r in results]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_models_agree_with_the_pytorch_model(
    fmt: str, exported: dict[str, Path], demo_model: Path, defect_scenes: list[ConveyorFrame]
) -> None:
    reference = YoloDetector(demo_model, imgsz=320)
    reference.load()
    other = YoloDetector(exported[fmt], imgsz=320)
    other.load()
    assert other.backend == fmt
    assert other.names == reference.names
    scenes = defect_scenes[:8]
    expected, got = _classes(reference, scenes), _classes(other, scenes)
    agree = sum(a == b for a, b in zip(expected, got, strict=True))
    assert agree >= 7, f"{fmt} disagrees with PyTorch: {got} vs {expected}"
    truth = [{t.class_name for t in s.truths} for s in scenes]
    assert sum(t <= g for t, g in zip(truth, got, strict=True)) >= 6


@pytest.mark.parametrize("fmt", ["pytorch", "onnx", "openvino"])
def test_the_direct_path_finds_what_ultralytics_predict_finds(
    fmt: str, exported: dict[str, Path], demo_model: Path, defect_scenes: list[ConveyorFrame]
) -> None:
    """The detector calls the predictor's steps itself, without `predict`'s per-call machinery
    (detect/detector.py): the same boxes, scores and classes, one frame at a time and in a batch,
    on every runtime."""
    detector = YoloDetector(demo_model if fmt == "pytorch" else exported[fmt], imgsz=320)
    detector.load()
    assert detector._predictor is not None  # the direct path is the one in use
    model = detector._model
    frames = [s.image for s in defect_scenes[:4]]
    singles = [detector.predict([frame], conf=0.3)[0] for frame in frames]
    batched = detector.predict(frames, conf=0.3)
    for frame, one, many in zip(frames, singles, batched, strict=True):
        [result] = model.predict(frame, imgsz=320, conf=0.3, verbose=False)
        expected = result.boxes.data.cpu().numpy()
        assert len(one) == len(expected) > 0
        np.testing.assert_allclose(one.boxes, expected[:, :4], atol=0.05)
        np.testing.assert_allclose(one.confidences, expected[:, 4], atol=1e-4)
        np.testing.assert_array_equal(one.class_ids, expected[:, 5].astype(np.int64))
        assert min(one.preprocess_ms, one.inference_ms, one.postprocess_ms) > 0
        # a batch finds the same things (floating-point sums may differ in the last digits)
        np.testing.assert_array_equal(np.sort(many.class_ids), np.sort(one.class_ids))
        np.testing.assert_allclose(np.sort(many.confidences), np.sort(one.confidences), atol=2e-3)
    # on the CPU, our own letterbox and NMS did it, not Ultralytics' (checked against theirs)
    assert all(box is not None for box in detector._predictor._letterboxes.values())


def _reference(model: object, frame: np.ndarray, conf: float) -> np.ndarray:
    [result] = model.predict(frame, imgsz=320, conf=conf, verbose=False)  # type: ignore[attr-defined]
    return result.boxes.data.cpu().numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize("fmt", ["pytorch", "openvino"])
def test_the_direct_path_agrees_on_any_frame_size_and_any_threshold(
    fmt: str,
    exported: dict[str, Path],
    demo_model: Path,
    defect_scenes: list[ConveyorFrame],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames of other sizes (portrait, small, already the model's size) are letterboxed as
    Ultralytics does, and low thresholds find what `predict` finds, with the NumPy NMS and
    with torchvision's (which takes frames with many candidates)."""
    detector = YoloDetector(demo_model if fmt == "pytorch" else exported[fmt], imgsz=320)
    detector.load()
    direct = detector._predictor
    assert direct is not None
    torchvision_calls = []
    nms = direct._nms
    direct._nms = lambda *a, **k: torchvision_calls.append(1) or nms(*a, **k)  # type: ignore[method-assign]
    image = defect_scenes[0].image
    frames = {
        "conveyor": image,
        "portrait": np.ascontiguousarray(np.rot90(image)),
        "small": np.ascontiguousarray(image[100:300, 150:450]),
        "model size": np.ascontiguousarray(image[80:400, 160:480]),
        "odd": np.ascontiguousarray(image[:333, :517]),
    }
    for limit in (detector_module._GREEDY_LIMIT, 0):
        monkeypatch.setattr(detector_module, "_GREEDY_LIMIT", limit)
        for name, frame in frames.items():
            for conf in (0.3, 0.01):
                [got] = detector.predict([frame], conf=conf)
                expected = _reference(detector._model, frame, conf)
                assert len(got) == len(expected), (name, conf, limit)
                np.testing.assert_allclose(got.boxes, expected[:, :4], atol=0.05, err_msg=name)
                np.testing.assert_allclose(got.confidences, expected[:, 4], atol=1e-4)
                np.testing.assert_array_equal(got.class_ids, expected[:, 5].astype(np.int64))
            assert direct._letterboxes[(frame.shape, frame.dtype.str)] is not None, name
        # NumPy's NMS first (no torchvision call at all), then torchvision's for every frame
        assert len(torchvision_calls) == (0 if limit else 2 * len(frames))


def test_backend_detection() -> None:
    assert model_backend(Path("a/best.pt")) == "pytorch"
    assert model_backend(Path("best.onnx")) == "onnx"
    assert model_backend(Path("best.engine")) == "tensorrt"


def test_torch_threads_follow_the_backend() -> None:
    from ultralytics.utils import torch_utils

    cores = os.cpu_count() or 1
    assert use_threads_for("pytorch") == cores
    assert torch.get_num_threads() == cores
    assert cores == torch_utils.NUM_THREADS  # what Ultralytics resets torch to on every predictor
    assert use_threads_for("onnx") == 1
    assert torch.get_num_threads() == 1
    use_threads_for("pytorch")


def test_ultralytics_is_configured_offline() -> None:
    config_dir = prepare_ultralytics()
    assert os.environ["YOLO_OFFLINE"] == "1"
    assert os.environ["YOLO_AUTOINSTALL"] == "False"
    assert (config_dir / "Ultralytics" / "Arial.ttf").is_file()
    from ultralytics.utils import ONLINE

    assert ONLINE is False


def test_a_model_file_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    from edge_inspector.errors import ModelError

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"broken\.pt: cannot load the model"):
        YoloDetector(bad).load()
    with pytest.raises(ModelError, match="model file not found"):
        YoloDetector(tmp_path / "absent.onnx").load()
