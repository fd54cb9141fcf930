"""Shared fixtures: the bundled demo model, synthetic frames with ground truth, configs."""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

# Home Assistant's test plugin puts its own testing_config (with a `custom_components` package)
# first on the import path; importing ours first makes `custom_components.edge_inspector` ours.
import custom_components  # noqa: F401
from edge_inspector.config import EngineConfig, load_config
from edge_inspector.demo import DEMO_MODEL
from edge_inspector.demo.synthetic import ConveyorCamera, ConveyorFrame, random_scene
from tests.mosquitto import Mosquitto, Watcher
from tests.real_ollama import RealOllama, installed

# every process a test starts must be gone when the run ends (tests/leftovers.py)
pytest_plugins = ["tests.leftovers"]

# Hypothesis's files (when pytest is run by hand, not by scripts/test.sh) stay out of the checkout
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "edge-inspector-hypothesis")
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on free loopback ports, stopped after the test, with any subscriber a
    failing test left open."""
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    yield server
    Watcher.close_all()
    server.stop()


@pytest.fixture(scope="session")
def real_ollama() -> Iterator[str]:
    """A real Ollama server with the real Qwen2.5 models (tests/real_ollama.py), for the whole
    run; its URL. In CI it must be there (the set-up installs it); elsewhere the tests that need
    it are skipped when it was never installed."""
    if not os.environ.get("REAL_OLLAMA_HOST") and not installed():
        if os.environ.get("CI"):
            pytest.fail("the real Ollama is not installed: scripts/real-ollama.sh install")
        pytest.skip("the real Ollama is not installed (scripts/real-ollama.sh install)")
    with RealOllama() as server:
        yield server.url


@pytest.fixture(scope="session")
def demo_model() -> Path:
    assert DEMO_MODEL.is_file(), "the demo model is missing: run `make demo-model`"
    return DEMO_MODEL


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf.tobytes())


@pytest.fixture(scope="session")
def defect_scenes() -> list[ConveyorFrame]:
    """Independent frames, each with at least one defect (ground truth attached)."""
    rng = np.random.default_rng(12345)
    scenes: list[ConveyorFrame] = []
    while len(scenes) < 12:
        scene = random_scene(rng, defect_rate=0.9)
        if scene.truths:
            scenes.append(scene)
    return scenes


@pytest.fixture(scope="session")
def clean_scene() -> ConveyorFrame:
    rng = np.random.default_rng(7)
    while True:
        scene = random_scene(rng, defect_rate=0.0)
        if not scene.truths:
            return scene


@pytest.fixture
def conveyor_frames() -> Callable[[int, int], list[ConveyorFrame]]:
    def _make(count: int, seed: int = 0) -> list[ConveyorFrame]:
        camera = ConveyorCamera(seed=seed, defect_rate=0.8)
        return [camera.next_frame() for _ in range(count)]

    return _make


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def _write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write


ALL_DEFECTS = "{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}"  # the demo model's classes


def camera_station(url: str, *, sid: str = "gate", name: str = "Gate", extra: str = "") -> str:
    """A triggered station on an HTTP snapshot camera at `url` (tests.camera_server) and the
    demo model, for `make_config`; `extra`: more of its keys, as YAML at the left margin."""
    more = textwrap.indent(textwrap.dedent(extra).strip("\n"), "  ")
    return f"""
- id: {sid}
  name: {name}
  mode: triggered
  source: {{type: http_snapshot, url: "{url}/snapshot.jpg"}}
  model: {{path: MODEL, imgsz: 320}}
  defects: {ALL_DEFECTS}
{more}
"""


@pytest.fixture
def make_config(
    tmp_path: Path, demo_model: Path, write_config: Callable[[str], Path]
) -> Callable[..., EngineConfig]:
    """A one-or-more-station configuration on the demo model, as a user would write it.

    A station that names no `model.runtime` runs PyTorch here, not `auto`: which runtime a
    machine's timing picks, and whether it batches, must not change what these tests see
    (tests/engine/test_autoruntime.py tests the choice)."""

    def _make(*stations: str, extra: str = "") -> EngineConfig:
        body = "stations:\n" + "".join(
            textwrap.indent(textwrap.dedent(s).strip() + "\n", "  ") for s in stations
        )
        body = body.replace("MODEL", str(demo_model))
        body += f"store:\n  path: {tmp_path / 'store'}\n" + textwrap.dedent(extra)
        return on_pytorch(load_config(write_config(body)))

    return _make


def on_pytorch(config: EngineConfig) -> EngineConfig:
    """`config` with `runtime: pytorch` for every station that leaves the runtime unset."""
    stations = tuple(
        s
        if "runtime" in s.model.model_fields_set
        else s.model_copy(update={"model": s.model.model_copy(update={"runtime": "pytorch"})})
        for s in config.stations
    )
    return config.model_copy(update={"stations": stations})
