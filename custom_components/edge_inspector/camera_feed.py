"""Pictures from camera entities into the engine: on each station's interval, and on demand.

A station fed by Home Assistant (every station in process; a service's `push` stations with a
camera mapped in the options) gets a picture from `camera.async_get_image` on its interval and
hands it to `engine.inspect_image`; a tick while the last picture is still being inspected is
skipped, so grabs never pile up. A camera that sends nothing (or no picture), or an engine
that cannot run the model, makes the station unavailable until a picture goes through again:
logged once each way, and told to its entities through `on_change`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from homeassistant.components import camera
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_track_time_interval

from edge_inspector.errors import EdgeInspectorError, ImageDecodeError, ModelError
from edge_inspector.events import InspectionResult, StationState

from .const import DOMAIN
from .entry_config import StationInfo
from .errors import station_error

if TYPE_CHECKING:
    from edge_inspector.contract import InspectionEngine

_LOGGER = logging.getLogger(__name__)


@dataclass(slots=True)
class CameraHealth:
    """Whether a station's pictures get through (what makes it unavailable when not)."""

    camera_error: str | None = None  # its camera entity sent nothing, or no picture
    engine_error: str | None = None  # the engine could not run the model on it
    grabbing: bool = False  # a picture of the interval is being taken and inspected

    @property
    def ok(self) -> bool:
        return self.camera_error is None and self.engine_error is None

    @property
    def error(self) -> str | None:
        """What went wrong (the camera's error first), for a person to read."""
        return self.camera_error or self.engine_error


class CameraFeed:
    """The stations' camera entities, polled on their intervals and on demand."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        engine: InspectionEngine,
        stations: Mapping[str, StationInfo],
        on_change: Callable[[str], None],
    ) -> None:
        """`on_change(station_id)`: a station's health changed (its entities look again)."""
        self.hass = hass
        self.entry = entry
        self.engine = engine
        self.stations = stations
        self.health: defaultdict[str, CameraHealth] = defaultdict(CameraHealth)
        self._on_change = on_change
        self._unsubs: list[Callable[[], None]] = []

    @callback
    def async_feed(self, info: StationInfo, state: StationState | None) -> None:
        """Feed a running station from its camera entity on an interval, if it is one that
        inspects the pictures sent to it continuously and has a camera entity."""
        if state is None or not state.push or state.mode != "continuous":
            return
        if not info.camera_entity_id:
            return
        self._unsubs.append(
            async_track_time_interval(
                self.hass,
                self._make_tick(info.station_id),
                timedelta(seconds=info.interval),
                name=f"edge_inspector {info.name}",
                cancel_on_shutdown=True,
            )
        )

    @callback
    def async_stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()

    def _make_tick(self, sid: str) -> Callable[[Any], None]:
        @callback
        def tick(_now: Any) -> None:
            health = self.health[sid]
            if health.grabbing:
                return  # the last frame is still being inspected: skip, never pile up
            health.grabbing = True
            self.entry.async_create_background_task(
                self.hass, self._grab(sid), f"edge_inspector grab {sid}"
            )

        return tick

    async def _grab(self, sid: str) -> None:
        try:
            await self.async_inspect(sid)
        except HomeAssistantError:
            pass  # logged once by async_inspect's availability handling
        finally:
            self.health[sid].grabbing = False

    async def async_inspect(
        self, sid: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        """Take a picture from the station's camera and inspect it now."""
        info = self.stations[sid]
        if info.remote and not info.camera_entity_id:
            # the engine reads its own camera
            try:
                return await self.engine.inspect_now(sid, part_id=part_id, lot_id=lot_id)
            except EdgeInspectorError as exc:
                raise station_error(info.name, exc) from exc
        try:
            image = await camera.async_get_image(self.hass, info.camera_entity_id, timeout=10)
        except HomeAssistantError as exc:
            self._camera_failed(info, str(exc) or type(exc).__name__)
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="camera_no_image",
                translation_placeholders={
                    "station": info.name,
                    "camera": info.camera_entity_id,
                    "error": str(exc),
                },
            ) from exc
        try:
            result = await self.engine.inspect_image(
                sid, image.content, part_id=part_id, lot_id=lot_id
            )
        except ImageDecodeError as exc:  # the camera sent something that is not a picture
            self._camera_failed(info, str(exc))
            raise station_error(info.name, exc) from exc
        except ModelError as exc:  # the engine could not run the model
            self._engine_failed(info, str(exc))
            raise station_error(info.name, exc) from exc
        except EdgeInspectorError as exc:
            raise station_error(info.name, exc) from exc
        self._pictures_ok(info)
        return result

    def _camera_failed(self, info: StationInfo, error: str) -> None:
        health = self.health[info.station_id]
        if health.camera_error is None:
            _LOGGER.warning(
                "%s unavailable: camera %s: %s", info.name, info.camera_entity_id, error
            )
        health.camera_error = error
        self._on_change(info.station_id)

    def _engine_failed(self, info: StationInfo, error: str) -> None:
        health = self.health[info.station_id]
        if health.engine_error is None:
            _LOGGER.error("%s unavailable: the engine failed: %s", info.name, error)
        health.engine_error = error
        self._on_change(info.station_id)

    def _pictures_ok(self, info: StationInfo) -> None:
        health = self.health[info.station_id]
        if health.camera_error is not None:
            _LOGGER.info("%s available again: camera %s", info.name, info.camera_entity_id)
            health.camera_error = None
            self._on_change(info.station_id)
        if health.engine_error is not None:
            _LOGGER.info("%s available again: the engine runs", info.name)
            health.engine_error = None
            self._on_change(info.station_id)
