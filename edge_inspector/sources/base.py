"""What every frame source shares: the interface, the newest-frame hand-off, and backoff."""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import SourceError, SourceExhaustedError
from ..frames import Frame

__all__ = ["Backoff", "Captured", "FrameHandoff", "FrameSource"]


class FrameSource(ABC):
    """Delivers frames to one station.

    `read()` returns the next frame. It raises `ImageDecodeError` for one bad frame (the station
    skips it), `SourceError` when the camera cannot deliver (the station goes unavailable and
    retries with backoff) and `SourceExhaustedError` when a finite source has no more frames.
    """

    #: A live camera: frames the station does not take in time are dropped, newest wins.
    live: bool = True

    async def start(self) -> None:
        """Open connections or start background readers."""

    @abstractmethod
    async def read(self, *, not_before: float | None = None) -> Frame:
        """The next frame; with `not_before` (a `time.monotonic()` value), one captured since."""

    async def close(self) -> None:
        """Stop background work and release connections."""

    def describe(self) -> str:
        """A short description for logs, without credentials."""
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class Captured[T]:
    """Something a producer captured (encoded bytes, a decoded picture) and when."""

    payload: T
    seq: int
    captured_at: float = field(default_factory=time.monotonic)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class _Slot[T]:
    item: Captured[T] | None = None
    version: int = 0
    exhausted: bool = False


class FrameHandoff[T]:
    """Passes frames from a producer (a task or a thread) to the station.

    With `drop=True` (live cameras) a new frame replaces one the station has not taken yet, so the
    station always inspects the newest frame however slow inference is: no queue that falls
    minutes behind. With `drop=False` (replaying a recording) the producer waits until the station
    has taken each frame, so nothing is skipped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, drop: bool) -> None:
        self._loop = loop
        self._drop = drop
        self._lock = threading.Lock()
        self._slot: _Slot[T] = _Slot()
        self._taken_version = 0
        self._wakeup = asyncio.Event()
        self._taken = threading.Event()
        self._taken.set()
        self._closed = threading.Event()
        self.error: str | None = None
        self.dropped = 0

    def _notify(self) -> None:
        if self._loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wakeup.set()
        else:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    def put(self, item: Captured[T]) -> bool:
        """Offer a frame; returns False once the hand-off is closed. May block when not dropping."""
        if not self._drop:
            while not self._taken.wait(0.2):
                if self._closed.is_set():
                    return False
        if self._closed.is_set():
            return False
        with self._lock:
            if self._slot.version > self._taken_version:
                self.dropped += 1
            self._slot.item = item
            self._slot.version += 1
            self.error = None
            if not self._drop:
                self._taken.clear()
        self._notify()
        return True

    def fail(self, error: str) -> None:
        """Record that the producer lost its camera (it keeps retrying on its own)."""
        with self._lock:
            self.error = error
        self._notify()

    def finish(self) -> None:
        """Record that a finite producer has no more frames."""
        with self._lock:
            self._slot.exhausted = True
        self._notify()

    def close(self) -> None:
        self._closed.set()
        self._taken.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def get(self, *, timeout: float | None, not_before: float | None = None) -> Captured[T]:
        """The newest item not yet taken (captured at or after `not_before`, if given)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wakeup.clear()
            with self._lock:
                item, version = self._slot.item, self._slot.version
                fresh = item is not None and version > self._taken_version
                # A replay hands over every frame in order; `not_before` is for live cameras.
                if (
                    fresh
                    and item is not None
                    and (not self._drop or not_before is None or item.captured_at >= not_before)
                ):
                    self._taken_version = version
                    self._taken.set()
                    return item
                if self._slot.exhausted:
                    raise SourceExhaustedError("the source has no more frames")
                error = self.error
            if error is not None:
                raise SourceError(error)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise SourceError(f"no frame for {timeout:.1f} s")
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                continue


class Backoff:
    """Capped exponential backoff: 1 s, 2 s, 4 s ... up to `maximum`, reset on success."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, factor: float = 2.0) -> None:
        self._initial, self._maximum, self._factor = initial, maximum, factor
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._maximum, self._next * self._factor)
        return delay

    def reset(self) -> None:
        self._next = self._initial
