"""Home Assistant tests load the integration from this working tree."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry

from edge_inspector.demo.synthetic import ConveyorFrame


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
