"""Make Ultralytics safe for a factory line: no network, a local font, sensible CPU threads.

Ultralytics reads its switches from the environment when it is first imported, so
`prepare_ultralytics` must run before that import; the detector module calls it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["default_cache_dir", "no_openvino_telemetry", "prepare_ultralytics", "use_threads_for"]

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def default_cache_dir() -> Path:
    """The cache Edge Inspector keeps outside any checkout (Ultralytics settings, fonts)."""
    base = os.environ.get("EDGE_INSPECTOR_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-inspector"


def _bundled_font() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return font if font.is_file() else None


def prepare_ultralytics(cache_dir: Path | None = None) -> Path:
    """Point Ultralytics at a config folder in our cache and switch off everything online.

    Returns the config folder. Safe to call more than once; only the first call before the
    import of `ultralytics` has an effect on its settings.
    """
    config_dir = (cache_dir or default_cache_dir()) / "ultralytics"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    # Ultralytics sets OMP_NUM_THREADS=1 when it is unset, which halves PyTorch on two cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    font = _bundled_font()
    if font is not None:
        # Ultralytics downloads Arial for every plot and label unless it finds it here.
        for folder in (config_dir, config_dir / "Ultralytics"):
            folder.mkdir(parents=True, exist_ok=True)
            for name in _FONT_NAMES:
                target = folder / name
                if not target.exists():
                    shutil.copyfile(font, target)
    no_openvino_telemetry()
    if "ultralytics" in sys.modules:
        from ultralytics.utils import SETTINGS

        if SETTINGS.get("sync"):
            SETTINGS.update({"sync": False})
    return config_dir


def no_openvino_telemetry() -> None:
    """OpenVINO's converter, which Ultralytics imports to export and to load an OpenVINO model,
    sends usage statistics to Google Analytics from a child process on each use (no network
    at run time but loopback: this is a factory line); its modules fall back to a stub when
    `openvino_telemetry` cannot be imported."""
    if "openvino_telemetry" not in sys.modules:
        # None in sys.modules makes the import fail (ImportError), as if not installed
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]


def use_threads_for(backend: str) -> int:
    """Give PyTorch every core when it runs the model; one thread when another runtime does.

    ONNX Runtime and OpenVINO bring their own thread pools; a second busy torch pool only slows
    them. Returns the torch thread count now in force.
    """
    import torch
    from ultralytics.utils import torch_utils

    threads = (os.cpu_count() or 1) if backend == "pytorch" else 1
    # `select_device` resets torch to this count (cores - 1, so 1 on two cores) on every
    # predictor set-up, so the module's constant is what has to change.
    torch_utils.NUM_THREADS = threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
