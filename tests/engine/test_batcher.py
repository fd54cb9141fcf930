"""The inference queue's batching window: it waits for stations that are in step with the
model, never for cameras on their own clocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest

from edge_inspector.detect.batcher import InferenceQueue
from edge_inspector.detect.detector import RawDetections
from edge_inspector.frames import Image

MODEL_S = 0.02  # what one model call takes


class SlowModel:
    """A detector that takes MODEL_S a call, whatever the batch, and records the batch sizes."""

    path = type("P", (), {"name": "slow"})()

    def __init__(self) -> None:
        self.batches: list[int] = []

    def load(self) -> None:
        pass

    def predict(self, images: Sequence[Image], *, conf: float) -> list[RawDetections]:
        time.sleep(MODEL_S)
        self.batches.append(len(images))
        empty = RawDetections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0, 0, 0
        )
        return [empty for _ in images]


FRAME = np.zeros((8, 8, 3), np.uint8)


async def test_free_running_stations_fall_into_batches() -> None:
    model = SlowModel()
    queue = InferenceQueue(model, max_batch=4, batch_window=0.2)  # type: ignore[arg-type]
    await queue.start()
    try:

        async def station(name: str) -> None:
            for _ in range(15):
                await queue.infer(FRAME, conf=0.5, client=name)

        await asyncio.gather(*(station(f"cam{n}") for n in range(4)))
    finally:
        await queue.close()
    assert sum(model.batches) == 60
    # once the stations know each other's pace, the model takes all four at a time (the
    # first frame found the model free and went alone: that station is one frame ahead and
    # the last batch is short)
    assert model.batches[0] == 1, model.batches
    assert model.batches[-6:-1] == [4] * 5, model.batches
    assert len(model.batches) <= 25, model.batches


async def test_cameras_on_their_own_clocks_are_not_waited_for() -> None:
    """Four 5-fps cameras, not in step (a frame every 50 ms from one of them): a frame goes to
    the model at once, not after waiting the window (40 ms here) for the others."""
    model = SlowModel()
    queue = InferenceQueue(model, max_batch=4, batch_window=0.04)  # type: ignore[arg-type]
    await queue.start()
    waits: list[float] = []
    try:

        async def camera(name: str, offset: float) -> None:
            await asyncio.sleep(offset)
            for _ in range(6):
                started = time.monotonic()
                await queue.infer(FRAME, conf=0.5, client=name)
                waits.append(time.monotonic() - started)
                await asyncio.sleep(0.2 - (time.monotonic() - started))

        await asyncio.gather(*(camera(f"cam{n}", n * 0.05) for n in range(4)))
    finally:
        await queue.close()
    assert sum(model.batches) == 24
    waits.sort()
    # The median frame waits for its own model call (20 ms), where waiting for every active
    # camera held it for the window too (60 ms).
    assert waits[len(waits) // 2] < 0.045, waits


async def test_after_runs_on_the_inference_thread_and_its_error_is_its_requests_alone() -> None:
    # The station's rules and tracking run right after the model, on its thread: no hop back
    # to the event loop before them. A bug there costs that frame, not its batch-mates'.
    import threading

    model = SlowModel()
    queue = InferenceQueue(model, max_batch=4, batch_window=0.2)  # type: ignore[arg-type]
    await queue.start()

    def where(_raw: RawDetections) -> str:
        return threading.current_thread().name

    def broken(_raw: RawDetections) -> str:
        raise ValueError("a bug in the rules")

    try:
        # the first finds the model free and goes alone, straight from `infer`; the other two
        # wait for it and go together
        alone, good, bad = await asyncio.gather(
            queue.infer(FRAME, conf=0.5, client="first", after=where),
            queue.infer(FRAME, conf=0.5, client="a", after=where),
            queue.infer(FRAME, conf=0.5, client="b", after=broken),
            return_exceptions=True,
        )
    finally:
        await queue.close()
    assert not isinstance(alone, BaseException) and not isinstance(good, BaseException)
    assert alone.after.startswith("edge_inspector_yolo") and alone.batch_size == 1
    assert good.after.startswith("edge_inspector_yolo") and good.batch_size == 2
    assert isinstance(bad, ValueError)
    assert model.batches == [1, 2]


async def test_a_lone_frame_that_fails_leaves_the_queue_working() -> None:
    """A frame that goes to the model alone (nothing to batch it with): its rules' bug or the
    model's error is raised to its caller, and the next frames are served."""
    from edge_inspector.errors import ModelError

    class FailingOnce(SlowModel):
        def predict(self, images: Sequence[Image], *, conf: float) -> list[RawDetections]:
            if not self.batches:
                self.batches.append(0)
                raise ModelError("the model's runtime failed")
            return super().predict(images, conf=conf)

    model = FailingOnce()
    queue = InferenceQueue(model, max_batch=4, batch_window=0.2)  # type: ignore[arg-type]
    await queue.start()

    def broken(_raw: RawDetections) -> str:
        raise ValueError("a bug in the rules")

    try:
        async with asyncio.timeout(10):  # a model left marked busy would hang the next frames
            with pytest.raises(ModelError, match="runtime failed"):
                await queue.infer(FRAME, conf=0.5, client="a")
            with pytest.raises(ValueError, match="bug in the rules"):
                await queue.infer(FRAME, conf=0.5, client="a", after=broken)
            # the model is free again: the next frames, alone or together, are served
            results = await asyncio.gather(
                *(queue.infer(FRAME, conf=0.5, client=name) for name in ("a", "b", "c"))
            )
    finally:
        await queue.close()
    assert [r.batch_size for r in results] == [1, 2, 2]
    assert model.batches == [0, 1, 1, 2]
    assert queue.frames == 4  # the failed model call served nobody


async def test_a_lone_frame_given_up_keeps_the_model_until_it_is_out() -> None:
    """Its caller gave up (a trigger's timeout) while the frame was in the model: the next
    batch goes in once the frame is out, not beside it, and frames that come meanwhile join
    that batch."""
    import threading

    inside = threading.Event()

    class Watched(SlowModel):
        ends: list[float] = []  # noqa: RUF012

        def predict(self, images: Sequence[Image], *, conf: float) -> list[RawDetections]:
            inside.set()
            try:
                return super().predict(images, conf=conf)
            finally:
                self.ends.append(time.monotonic())

    model = Watched()
    queue = InferenceQueue(model, max_batch=4, batch_window=0.2)  # type: ignore[arg-type]
    await queue.start()
    try:
        async with asyncio.timeout(10):
            first = asyncio.ensure_future(queue.infer(FRAME, conf=0.5, client="a"))
            while not inside.is_set():
                await asyncio.sleep(0.001)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            later = await asyncio.gather(
                *(queue.infer(FRAME, conf=0.5, client=name) for name in ("b", "c"))
            )
    finally:
        await queue.close()
    assert model.batches == [1, 2]
    # loop.time() is time.monotonic(): the batch went in after the given-up frame came out
    assert all(r.started_at >= model.ends[0] for r in later), (later, model.ends)


async def test_a_frame_whose_executor_is_shut_down_gets_a_model_error() -> None:
    """The inference thread is shut down (the engine stopping) while a frame still waits for
    it: its caller, who did not give up, is told the detector stopped, not cancelled."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from edge_inspector.errors import ModelError

    executor = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    model = SlowModel()
    queue = InferenceQueue(model, executor=executor)  # type: ignore[arg-type]
    await queue.start()
    executor.submit(release.wait, 10)  # the thread busy with something else (pictures)
    try:
        async with asyncio.timeout(10):
            frame = asyncio.ensure_future(queue.infer(FRAME, conf=0.5, client="a"))
            await asyncio.sleep(0)  # one step: submitted, queued behind the other work
            assert not frame.done()
            executor.shutdown(wait=False, cancel_futures=True)
            with pytest.raises(ModelError, match="the detector was stopped"):
                await frame
    finally:
        release.set()
        await queue.close()
        executor.shutdown(wait=True)
    assert model.batches == []
