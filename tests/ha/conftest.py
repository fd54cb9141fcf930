"""Home Assistant tests load the integration from this working tree."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cv2
import pytest
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry

from edge_inspector.demo.synthetic import ConveyorFrame
from tests.ha_release import DEPRECATED_USE
from tests.ollama_server import FakeOllama


@pytest.fixture(autouse=True)
async def auto_enable_custom_integrations(
    hass: HomeAssistant, enable_custom_integrations: None
) -> None:
    # A real Home Assistant always runs its core integration; conversation (ours depends on it
    # for Assist) needs it.
    assert await async_setup_component(hass, "homeassistant", {})


@pytest.fixture
async def camera_file(
    hass: HomeAssistant, tmp_path: Path, defect_scenes: list[ConveyorFrame]
) -> Path:
    """A real camera entity (`local_file`) showing a frame with a defect."""
    path = tmp_path / "camera.jpg"
    cv2.imwrite(str(path), defect_scenes[2].image)
    entry = MockConfigEntry(
        domain="local_file",
        options={"name": "Press camera", "file_path": str(path)},
        title="Press camera",
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert hass.states.get("camera.press_camera") is not None
    return path


@pytest.fixture(autouse=True)
def no_deprecated_use() -> Iterator[None]:
    """Fail any test in which Home Assistant reports a deprecated use by our integration (its
    own handler on the root logger, for the whole test: caplog keeps only one phase's records).
    Python's own DeprecationWarnings from our modules are errors through pyproject's
    filterwarnings."""
    reports: list[str] = []

    class Reports(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if DEPRECATED_USE.search(message := record.getMessage()):
                reports.append(message)

    handler = Reports(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
    assert not reports, "deprecated use reported by Home Assistant:\n" + "\n".join(reports)


@pytest.fixture
async def ollama(socket_enabled: None) -> AsyncIterator[FakeOllama]:
    """A scripted Ollama on a free loopback port (sockets opened for it), stopped after the
    test."""
    server = FakeOllama()
    await server.start()
    yield server
    await server.stop()
