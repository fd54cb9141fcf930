"""One inference thread per model, shared by every station that uses it.

While the model runs, frames from other stations queue up; when it is free it takes all of them
(up to `max_batch`) as one batch. Stations running freely tend to fall into step with the model
so that each arrives just as the other's inference starts, and then nothing is ever batched; so
when a request arrives, the queue waits up to `batch_window` seconds for the stations whose next
frame is due within that window (each station's frames arrive about every `period`, learned
from its last frames). Once free-running stations are in step, every one is waiting when the
model frees up and the window costs nothing. Cameras on their own clocks (5 fps each, not in
step) are never waited for: the next frame of most of them is 200 ms away, and waiting for all
of them would leave the model idle for the whole window before every batch. A lone station never
waits: when the model is free, its frame goes to the model straight from `infer`, without the
queue's task in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError
from ..frames import Image
from ..tasks import cancel
from .detector import RawDetections, YoloDetector

__all__ = ["BatchedResult", "InferenceQueue", "inference_thread"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchedResult:
    detections: RawDetections
    batch_size: int
    started_at: float  # loop.time() when the batch went into the model
    after: Any = None  # what the request's `after` returned (on the inference thread)


@dataclass(slots=True)
class _Request:
    image: Image
    conf: float
    future: asyncio.Future[BatchedResult] = field(repr=False)
    client: str = ""
    after: Callable[[RawDetections], Any] | None = None


@dataclass(slots=True)
class _Client:
    seen: float  # loop time of its last frame
    period: float | None = None  # its frames' usual interval (smoothed)

    def arrived(self, now: float) -> None:
        interval = now - self.seen
        self.period = interval if self.period is None else 0.7 * self.period + 0.3 * interval
        self.seen = now


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """`callback` on `loop` from another thread; nothing once the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def inference_thread() -> ThreadPoolExecutor:
    """The one thread that runs every model of a process.

    PyTorch's CPU kernels use an OpenMP thread team per calling thread. Two threads running
    inference keep two teams spinning on the same cores, and both run about half as fast for
    as long as the process lives (measured: 31 ms a frame on one thread, 55-75 ms once a second
    thread has run the model). So models take turns on a single thread.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge_inspector_yolo")


class InferenceQueue:
    """Feeds a `YoloDetector` from many stations, in batches, on the inference thread."""

    def __init__(
        self,
        detector: YoloDetector,
        *,
        max_batch: int = 8,
        batch_window: float = 0.010,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.detector = detector
        self.max_batch = max_batch
        self.batch_window = batch_window
        self._clients: dict[str, _Client] = {}
        self._own_executor = executor is None
        self._executor = executor or inference_thread()
        self._pending: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # no batch in the model
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.frames = 0

    @property
    def cpu_thread(self) -> ThreadPoolExecutor | None:
        """The inference thread, where the model runs on the CPU; None on a GPU.

        A station's other CPU work that comes in bursts (an incident's pictures: a drawing and
        three JPEGs, about 4 ms here) goes there, between two batches. Run beside the model, it
        takes a core from the model's thread team, which then waits for its slowest thread: the
        frames in flight slowed by more than the work costs (the engine's p99 frame time 1.39x
        the bare loop's on two cores). On a GPU the model leaves the cores free and its thread
        is better kept for the next batch.
        """
        return self._executor if self.detector.device.strip().lower() == "cpu" else None

    @property
    def depth(self) -> int:
        """Frames waiting for the model."""
        return len(self._pending)

    async def start(self) -> None:
        """Load the model (in the inference thread) and start serving."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.detector.load)
        self._task = asyncio.create_task(
            self._serve(), name=f"edge_inspector yolo {self.detector.path.name}"
        )

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        for request in self._pending:
            if not request.future.done():
                request.future.set_exception(ModelError("the detector was stopped"))
        self._pending.clear()
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def infer(
        self,
        image: Image,
        *,
        conf: float,
        client: str = "",
        after: Callable[[RawDetections], Any] | None = None,
    ) -> BatchedResult:
        """Detect objects in one frame; waits its turn in the next batch.

        `after` (the station's rules and tracking) runs on the inference thread as soon as the
        batch is out of the model; its value comes back as `BatchedResult.after`, and what it
        raises is raised here. Run there, it costs no hop back to the event loop and does not
        wait for the loop, and it runs while the model's thread team is idle instead of beside
        it: on two cores the same tracking took about 1.2 ms a frame on the loop against 0.4 ms
        alone."""
        if self._task is None or self._task.done():
            raise ModelError(f"{self.detector.path.name}: the detector is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        known = self._clients.get(client)
        if known is None:
            self._clients[client] = _Client(now)
        else:
            known.arrived(now)
        future: asyncio.Future[BatchedResult] = loop.create_future()
        request = _Request(image, conf, future, client, after)
        if len(self._clients) == 1 and self._idle.is_set():
            # The only station on this model, and the model is free: straight to it, without
            # the queue's task in between (two turns of the loop a frame). With two stations
            # or more every frame goes through the queue, which batches frames that arrive
            # together (two triggers at once, a second station at any moment).
            return await self._direct(request)
        self._pending.append(request)
        self._wakeup.set()
        return await future

    async def _direct(self, request: _Request) -> BatchedResult:
        started = asyncio.get_running_loop().time()
        ((result, after, error),) = await self._run([request], request.conf)
        if error is not None:
            raise error
        return BatchedResult(result, 1, started, after)

    async def _run(
        self, batch: list[_Request], conf: float
    ) -> list[tuple[RawDetections, Any, BaseException | None]]:
        """`_predict` on the inference thread. The model counts as busy (`_idle` clear) until
        the batch is out of it, even when its caller gives up first."""
        loop = asyncio.get_running_loop()
        running = self._executor.submit(self._predict, batch, conf)
        self._idle.clear()
        try:
            results = await asyncio.wrap_future(running, loop=loop)
        except asyncio.CancelledError:
            if running.done():
                self._idle.set()
            else:  # the caller gave up: the model is free once the batch is out of it
                running.add_done_callback(lambda _: _call_soon(loop, self._idle.set))
            task = asyncio.current_task()
            if running.cancelled() and task is not None and not task.cancelling():
                # not the caller's doing: the executor was shut down under it
                raise ModelError(f"{self.detector.path.name}: the detector was stopped") from None
            raise
        except BaseException as exc:
            self._idle.set()
            if isinstance(exc, ModelError):
                _LOGGER.error("%s", exc)
            raise
        self._idle.set()
        self.batches += 1
        self.frames += len(batch)
        return results

    def _expected(self, now: float) -> int:
        """How many frames a batch should wait for: those waiting, and one from each other
        station whose next frame is due within the window. A station not heard from for a
        second (a dead camera, a triggered station between parts) is not waited for."""
        waiting = {r.client for r in self._pending}
        due = 0
        for name, client in self._clients.items():
            if name in waiting or now - client.seen >= 1.0 or client.period is None:
                continue
            if client.seen + client.period - now <= self.batch_window:
                due += 1
        return min(len(self._pending) + due, self.max_batch)

    async def _gather(self) -> None:
        """Wait (up to the window) for the frames due within it. Who is due is decided once:
        in a steady trickle of frames somebody is always due next, and counting them again
        would always wait the whole window."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        want = self._expected(now)
        if self.batch_window <= 0 or len(self._pending) >= want:
            return
        deadline = now + self.batch_window
        while len(self._pending) < want:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._idle.wait()  # a lone station's frame still in the model (`_direct`)
                await self._gather()  # free when every active station is already waiting
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                batch = [r for r in batch if not r.future.done()]  # callers that gave up
                if not batch:
                    continue
                conf = min(r.conf for r in batch)
                started = loop.time()
                try:
                    results = await self._run(batch, conf)
                except ModelError as exc:
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    continue
                for request, (result, after, error) in zip(batch, results, strict=True):
                    if request.future.done():
                        continue
                    if error is not None:
                        request.future.set_exception(error)
                    else:
                        request.future.set_result(BatchedResult(result, len(batch), started, after))

    def _predict(
        self, batch: list[_Request], conf: float
    ) -> list[tuple[RawDetections, Any, BaseException | None]]:
        """The model on a batch, then each request's `after` (on the inference thread). What an
        `after` raises is its request's alone."""
        results = self.detector.predict([r.image for r in batch], conf=conf)
        out: list[tuple[RawDetections, Any, BaseException | None]] = []
        for request, result in zip(batch, results, strict=True):
            try:
                value = None if request.after is None else request.after(result)
            except Exception as exc:  # a bug in one station's rules costs its frame only
                out.append((result, None, exc))
            else:
                out.append((result, value, None))
        return out
