"""Home Assistant's own MJPEG IP Camera integration shows a standalone engine's annotated live
view (the service runs as a real separate process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from homeassistant.components import camera
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from tests.service import TOKEN, Service, running_service


@pytest.fixture
def service(tmp_path: Path, socket_enabled: None) -> Iterator[Service]:
    with running_service(tmp_path) as svc:
        yield svc


async def test_the_mjpeg_camera_shows_the_annotated_live_view(
    hass: HomeAssistant, service: Service
) -> None:
    entry = MockConfigEntry(
        domain="mjpeg",
        title="Line A live",
        options={
            "mjpeg_url": f"{service.url}/api/stations/line_a/stream.mjpeg?token={TOKEN}",
            "still_image_url": None,
            "authentication": "basic",
            "username": None,
            "password": "",
            "verify_ssl": True,
        },
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    state = hass.states.get("camera.line_a_live")
    assert state is not None and state.state != "unavailable"
    image = await camera.async_get_image(hass, "camera.line_a_live", timeout=30)
    assert image.content_type == "image/jpeg"
    frame = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
    assert frame is not None and frame.shape[0] > 100 and frame.shape[1] > 100
