"""A real HTTP camera on loopback: snapshot and MJPEG endpoints that tests can break and mend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import cv2
import numpy as np
from aiohttp import web

from tests.conftest import jpeg

BOUNDARY = "frameboundary"


_BITS = 10
_CELL = 16


def numbered_frame(number: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A frame whose number survives JPEG: its bits as black/white 16-pixel cells along the top."""
    width, height = size
    image = np.full((height, width, 3), 80, np.uint8)
    cv2.putText(
        image, str(number), (5, height // 2 + 20), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2
    )
    for bit in range(_BITS):
        image[:_CELL, bit * _CELL : (bit + 1) * _CELL] = 255 if number >> bit & 1 else 0
    return image


def frame_number(image: np.ndarray) -> int:
    number = 0
    for bit in range(_BITS):
        cell = image[4 : _CELL - 4, bit * _CELL + 4 : (bit + 1) * _CELL - 4]
        if np.median(cell) > 128:
            number |= 1 << bit
    return number


class CameraServer:
    """Serves /snapshot.jpg and /stream.mjpg. `down` makes it answer 503 and cut streams."""

    def __init__(self, *, fps: float = 50.0, content_length: bool = True) -> None:
        self.fps = fps
        self.content_length = content_length
        self.down = False
        self.hold: asyncio.Event | None = None
        self.counter = 0
        self.snapshot_body: bytes | None = None  # override what /snapshot.jpg returns
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> CameraServer:
        app = web.Application()
        app.router.add_get("/snapshot.jpg", self._snapshot)
        app.router.add_get("/stream.mjpg", self._stream)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _snapshot(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.hold is not None:  # the test holds the shutter: the picture comes when it says
            await self.hold.wait()
        if self.down:
            return web.Response(status=503, text="camera rebooting")
        self.counter += 1
        body = (
            self.snapshot_body
            if self.snapshot_body is not None
            else jpeg(numbered_frame(self.counter))
        )
        return web.Response(body=body, content_type="image/jpeg")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.down:
            return web.Response(status=503, text="camera rebooting")
        response = web.StreamResponse(
            headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}"}
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while not self.down:
                self.counter += 1
                body = jpeg(numbered_frame(self.counter))
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                if self.content_length:
                    head += f"Content-Length: {len(body)}\r\n"
                await response.write(head.encode() + b"\r\n" + body + b"\r\n")
                await asyncio.sleep(1 / self.fps)
        return response


@contextlib.asynccontextmanager
async def camera(**kwargs: object) -> AsyncIterator[CameraServer]:
    async with CameraServer(**kwargs) as server:  # type: ignore[arg-type]
        yield server
