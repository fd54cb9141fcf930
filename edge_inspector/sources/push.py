"""Frames pushed in by another part of the system: Home Assistant cameras, the HTTP API."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from ..errors import SourceError
from ..frames import Frame, Image, decode_image
from .base import Captured, FrameHandoff, FrameSource

__all__ = ["PushSource"]


class PushSource(FrameSource):
    """Holds the newest pushed frame. Idle is not an error: `read` waits for the next push."""

    def __init__(self, name: str = "push", *, executor: Executor | None = None) -> None:
        self._name = name
        self._executor = executor
        self._handoff: FrameHandoff[Frame] | None = None
        self._seq = 0

    def describe(self) -> str:
        return f"push {self._name}"

    async def start(self) -> None:
        self._handoff = FrameHandoff(asyncio.get_running_loop(), drop=True)

    async def close(self) -> None:
        if self._handoff is not None:
            self._handoff.close()

    async def push(
        self, image: bytes | Image, *, part_id: str | None = None, lot_id: str | None = None
    ) -> Frame:
        """Hand in a picture (encoded bytes or a BGR array) for the station's loop to read;
        returns the frame it became."""
        if self._handoff is None:
            raise SourceError(f"{self.describe()}: not started")
        frame = await self.frame(image, part_id=part_id, lot_id=lot_id)
        self._handoff.put(Captured(frame, frame.seq, frame.captured_at, frame.timestamp))
        return frame

    async def frame(
        self, image: bytes | Image, *, part_id: str | None = None, lot_id: str | None = None
    ) -> Frame:
        """A frame of this source from a picture, decoded off the event loop, without handing
        it to the loop (for a caller that inspects it itself and waits for the verdict)."""
        if isinstance(image, bytes | bytearray):
            data = bytes(image)
            image = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: decode_image(data, origin=self.describe())
            )
        self._seq += 1
        return Frame(image, self._seq, self._name, part_id=part_id, lot_id=lot_id)

    async def read(self, *, not_before: float | None = None) -> Frame:
        if self._handoff is None:
            raise SourceError(f"{self.describe()}: not started")
        return (await self._handoff.get(timeout=None, not_before=not_before)).payload
