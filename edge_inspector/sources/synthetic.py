"""The demo's conveyor camera as a frame source."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from ..demo.synthetic import ConveyorCamera, GroundTruth
from ..frames import Frame
from .base import FrameSource

__all__ = ["SyntheticSource"]


class SyntheticSource(FrameSource):
    """Renders the next conveyor frame on every read; keeps the ground truth of the last one."""

    live = False

    def __init__(self, camera: ConveyorCamera, *, executor: Executor | None = None) -> None:
        self._camera = camera
        self._executor = executor
        self._seq = 0
        self.last_truths: tuple[GroundTruth, ...] = ()

    def describe(self) -> str:
        return "synthetic conveyor"

    async def read(self, *, not_before: float | None = None) -> Frame:
        rendered = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._camera.next_frame
        )
        self._seq += 1
        self.last_truths = rendered.truths
        return Frame(rendered.image, self._seq, "synthetic")
