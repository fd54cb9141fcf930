"""RTSP streams and recorded videos, decoded in a thread by PyAV (or OpenCV).

A live stream (RTSP, or a file with `realtime`) keeps only the newest decoded frame: when the
detector is slower than the camera the station skips frames instead of falling behind. A file
replayed without `realtime` hands over every frame in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..errors import SourceError
from ..frames import Frame, Image
from .base import Backoff, Captured, FrameHandoff, FrameSource
from .http import redact_url

__all__ = ["VideoSource"]

_LOGGER = logging.getLogger(__name__)


def _pyav_frames(url: str, transport: str, timeout: float, realtime: bool) -> Iterator[Any]:
    import av

    options = {"rtsp_transport": transport} if url.startswith("rtsp") else {}
    try:
        container = av.open(url, options=options, timeout=(timeout, timeout))
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot open: {exc}") from None
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 0) or 25.0
        started = time.monotonic()
        try:
            for index, frame in enumerate(container.decode(stream)):
                if realtime and not url.startswith("rtsp"):
                    # A file played as a camera: wait until this frame's moment has come.
                    due = started + index / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield frame
        except av.FFmpegError as exc:
            raise SourceError(f"decoding failed: {exc}") from None


def _opencv_frames(url: str, realtime: bool) -> Iterator[Image]:
    import cv2

    capture = cv2.VideoCapture(url)
    if not capture.isOpened():
        raise SourceError("cannot open with OpenCV")
    rate = capture.get(cv2.CAP_PROP_FPS) or 25.0
    started = time.monotonic()
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            if realtime and not url.startswith("rtsp"):
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            index += 1
            yield np.asarray(image, np.uint8)
    finally:
        capture.release()


def _to_bgr(payload: Any) -> Image:
    if isinstance(payload, np.ndarray):
        return payload
    image: Image = payload.to_ndarray(format="bgr24")
    return image


class VideoSource(FrameSource):
    """An RTSP URL or a video file, decoded by a reader thread that reconnects on its own."""

    def __init__(
        self,
        url: str,
        *,
        backend: str = "pyav",
        transport: str = "tcp",
        timeout: float = 10.0,
        realtime: bool | None = None,
        loop: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self._url = url
        self._backend = backend
        self._transport = transport
        self._timeout = timeout
        self._is_stream = "://" in url and not url.startswith("file:")
        self._realtime = self._is_stream if realtime is None else realtime
        self._loop_file = loop
        self._executor = executor
        self.live = self._realtime
        self._handoff: FrameHandoff[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.decoded = 0

    def describe(self) -> str:
        return f"video {redact_url(self._url)}"

    @property
    def dropped(self) -> int:
        return self._handoff.dropped if self._handoff is not None else 0

    async def start(self) -> None:
        self._handoff = FrameHandoff(asyncio.get_running_loop(), drop=self._realtime)
        self._thread = threading.Thread(
            target=self._run, name=f"edge_inspector {self.describe()}", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        if self._handoff is not None:
            self._handoff.close()
        if self._thread is not None:
            thread = self._thread
            await asyncio.get_running_loop().run_in_executor(None, thread.join, self._timeout + 2)

    async def read(self, *, not_before: float | None = None) -> Frame:
        if self._handoff is None:
            raise SourceError(f"{self.describe()}: not started")
        timeout = self._timeout if self._realtime else None
        item = await self._handoff.get(timeout=timeout, not_before=not_before)
        image = await asyncio.get_running_loop().run_in_executor(
            self._executor, _to_bgr, item.payload
        )
        return Frame(image, item.seq, redact_url(self._url), item.captured_at, item.timestamp)

    def _frames(self) -> Iterator[Any]:
        if self._backend == "opencv":
            return _opencv_frames(self._url, self._realtime)
        return _pyav_frames(self._url, self._transport, self._timeout, self._realtime)

    def _run(self) -> None:
        assert self._handoff is not None
        handoff = self._handoff
        backoff = Backoff()
        seq = 0
        while not self._stop.is_set():
            error: str | None = None
            try:
                for payload in self._frames():
                    seq += 1
                    self.decoded += 1
                    backoff.reset()
                    if not handoff.put(Captured(payload, seq)):
                        return
                    if self._stop.is_set():
                        return
            except SourceError as exc:
                error = str(exc)
            except (
                Exception
            ) as exc:  # a decoder library failing in a new way must not kill the thread
                error = f"{type(exc).__name__}: {exc}"
            if error is None and not self._is_stream:
                if self._loop_file:
                    continue
                handoff.finish()
                return
            message = f"{self.describe()}: {error or 'the stream ended'}"
            _LOGGER.debug(message)
            handoff.fail(message)
            if self._stop.wait(backoff.next_delay()):
                return


with contextlib.suppress(ImportError):  # PyAV logs every RTSP hiccup at ERROR through FFmpeg
    import av.logging

    av.logging.set_level(av.logging.PANIC)
