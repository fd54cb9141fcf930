"""One inspection station: its camera, its share of a model, its rules, and its results.

The station's loop takes the newest frame, has it detected (batched with other stations that
share the model), applies the defect rules, tracking and debounce, and hands the result to an
output worker. The worker stores images and history and tells the sinks, so detection never
waits for the disk or a subscriber. Its queue drops the oldest plain inspection when it is
full, and never an incident.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .annotate import annotate, crop
from .config import StationConfig
from .detect.batcher import InferenceQueue
from .detect.detector import RawDetections
from .detect.rules import DefectRules
from .detect.tracking import Confirmation, DefectTracker
from .errors import (
    EdgeInspectorError,
    ImageDecodeError,
    ModelError,
    RefusedError,
    SourceError,
    SourceExhaustedError,
)
from .events import (
    Detection,
    Incident,
    InspectionResult,
    Latency,
    ModelInfo,
    StationState,
    Verdict,
    VlmResult,
)
from .frames import Frame, encode_jpeg
from .sinks import EventSink
from .sources import Backoff, FrameSource, PushSource
from .store import Store
from .tasks import cancel

__all__ = ["Station"]

_LOGGER = logging.getLogger(__name__)
_OUTPUT_LIMIT = 64  # plain inspections waiting for the store and sinks
_RECORD_WAIT_S = 10.0  # the longest a caller waits for its inspection to be stored


@dataclass(slots=True)
class _Output:
    result: InspectionResult
    incidents: list[Incident]
    frame: Frame | None  # kept only when images must be written
    recorded: asyncio.Future[None] | None = None  # set once stored and told (or dropped)


def _new_id() -> str:
    return uuid.uuid4().hex


def _settle(recorded: asyncio.Future[None] | None) -> None:
    if recorded is not None and not recorded.done():
        recorded.set_result(None)


class Station:
    """Runs one station until stopped. Create through `Engine`, or directly in tests."""

    def __init__(
        self,
        config: StationConfig,
        *,
        source: FrameSource,
        inference: InferenceQueue,
        store: Store,
        sink: EventSink,
        executor: Executor | None = None,
        vlm_initial: VlmResult | None = None,
        vlm_backlog: Callable[[], tuple[int, float | None]] | None = None,
    ) -> None:
        self.config = config
        self._vlm_initial = vlm_initial  # what a new incident says about the VLM (None: off)
        # this station's incidents waiting for the VLM, and the oldest one's wait (None: off)
        self._vlm_backlog = vlm_backlog
        self._pushed = isinstance(source, PushSource)
        # a station wired to a PLC says so from the start: unavailable until the link is up
        self.plc: Literal["connected", "unavailable"] | None = (
            None if config.plc is None else "unavailable"
        )
        self.plc_error: str | None = None if config.plc is None else "not connected yet"
        self.source = source
        self._inference = inference
        self._store = store
        self._sink = sink
        self._executor = executor
        detector = inference.detector
        self.rules = DefectRules(config, detector.names)
        self._tracker = DefectTracker(
            config.tracking, config.debounce, triggered=config.mode == "triggered"
        )
        self._conf_floor = self._detector_floor()
        self._last_frame_at: float | None = None  # when the last frame was inspected (loop time)
        self._frame_period = 0.0  # smoothed seconds between frames, measured
        self._lock = asyncio.Lock()
        self._enabled = asyncio.Event()
        if config.enabled:
            self._enabled.set()
        self._outputs: collections.deque[_Output | None] = collections.deque()  # None: stop
        self._output_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._state_dirty = True
        self._state_urgent = True
        self._last_state_at = 0.0
        self._state_timer: asyncio.TimerHandle | None = None
        self.available = False
        self.error: str | None = None
        self.finished = asyncio.Event()
        self.frames = 0
        self.inspections = 0
        self.defects = 0
        self.incidents = 0
        self.frame_errors = 0
        self.dropped_outputs = 0
        self.last_defect_class: str | None = None
        self.last_incident_id: str | None = None
        self.last_latency_ms: float | None = None
        self.defect_present = False
        # The last frame inspected and what was found on it: the live annotated view.
        self.last_view: tuple[Frame, tuple[Detection, ...]] | None = None
        self.view_seq = 0

    # -- control ----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def enabled(self) -> bool:
        return self._enabled.is_set()

    @property
    def pending_outputs(self) -> int:
        """Inspections waiting to be stored and published."""
        return sum(1 for o in self._outputs if o is not None)

    def set_enabled(self, enabled: bool) -> None:
        """Pause or resume inspection (triggered inspections are refused while paused)."""
        if enabled != self.enabled:
            (self._enabled.set if enabled else self._enabled.clear)()
            self._mark_state(urgent=True)

    def set_threshold(self, class_name: str, confidence: float) -> None:
        """Change a defect class's confidence threshold."""
        self.rules.set_threshold(class_name, confidence)
        self._conf_floor = self._detector_floor()  # follows the thresholds up as well as down
        self._mark_state(urgent=True)

    def _detector_floor(self) -> float:
        """The confidence the detector reports down to: the lowest threshold (the tracker also
        sees detections up to 0.25, below any class's threshold, to keep its tracks)."""
        return min(*self.rules.thresholds.values(), 0.25)

    def refresh_state(self) -> None:
        """Publish the state again soon (at most once a second): what it shows changed."""
        self._mark_state()

    def state(self) -> StationState:
        vlm_queue, vlm_oldest = (None, None) if self._vlm_backlog is None else self._vlm_backlog()
        return StationState(
            station_id=self.id,
            name=self.config.name,
            enabled=self.enabled,
            available=self.available,
            mode=self.config.mode,
            error=self.error,
            frames=self.frames,
            inspections=self.inspections,
            defects=self.defects,
            incidents=self.incidents,
            frame_errors=self.frame_errors,
            last_defect_class=self.last_defect_class,
            last_incident_id=self.last_incident_id,
            last_latency_ms=self.last_latency_ms,
            defect_present=self.defect_present,
            thresholds=self.rules.thresholds,
            line=self.config.line,
            product=self.config.product,
            model=self.config.model.path.name,
            runtime=self._inference.detector.backend,
            push=self._pushed,
            plc=self.plc,
            plc_error=self.plc_error,
            vlm_queue=vlm_queue,
            vlm_oldest_pending_s=vlm_oldest,
            updated_at=datetime.now(UTC),
        )

    async def start(self) -> None:
        try:
            await self.source.start()
        except SourceError as exc:
            self._set_unavailable(str(exc))
        self._tasks.append(
            asyncio.create_task(self._output_worker(), name=f"edge_inspector {self.id} output")
        )
        if self.config.mode == "continuous":
            self._tasks.append(asyncio.create_task(self._run(), name=f"edge_inspector {self.id}"))
        elif not self.error:
            self._set_available()

    @property
    def model_info(self) -> ModelInfo:
        """The model this station inspects with."""
        return self._inference.detector.info

    async def stop(self) -> None:
        """Stop the loop, finish writing what was detected, close the source."""
        if self._state_timer is not None:
            self._state_timer.cancel()
            self._state_timer = None
        await cancel(*self._tasks[1:])
        if self._tasks:
            output = self._tasks[0]
            self._outputs.append(None)
            self._output_ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await output
        self._tasks.clear()
        with contextlib.suppress(EdgeInspectorError):
            await self.source.close()

    # -- availability -----------------------------------------------------------------------

    def _set_unavailable(self, error: str) -> None:
        if self.available or self.error is None:
            _LOGGER.warning("station %s unavailable: %s", self.id, error)
        self.available = False
        self.error = error
        self._mark_state(urgent=True)

    def _set_available(self) -> None:
        if not self.available:
            if self.error is not None:
                _LOGGER.info("station %s is available again", self.id)
                self._frames_missed()
            self.available = True
            self.error = None
            self._mark_state(urgent=True)

    def _frames_missed(self) -> None:
        """Back from an outage: tell the tracker how many frames went by unseen, so the tracks
        of parts that moved on meanwhile move on too (or age out) instead of taking over a new
        defect where those parts would have been, and a line that stood still reports nothing
        twice. Counted at the station's frame rate, or its measured one when free-running."""
        if self._last_frame_at is None:
            return
        period = 1.0 / self.config.fps if self.config.fps else self._frame_period
        if period:
            elapsed = asyncio.get_running_loop().time() - self._last_frame_at
            self._tracker.skip(int(elapsed / period) - 1)

    def set_plc(self, status: Literal["connected", "unavailable"], error: str | None) -> None:
        """The PLC link's status, shown in the station's state (told at once)."""
        if (self.plc, self.plc_error) != (status, error):
            self.plc, self.plc_error = status, error
            self._mark_state(urgent=True)

    def _mark_state(self, *, urgent: bool = False) -> None:
        self._state_dirty = True
        self._state_urgent = self._state_urgent or urgent
        self._output_ready.set()

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        interval = 1.0 / self.config.fps if self.config.fps else 0.0
        while True:
            await self._enabled.wait()
            started = loop.time()
            try:
                # A pushed source may stay idle for hours: wait for its frame outside the lock,
                # so `inspect_image` (a Home Assistant camera, the HTTP API) is never held up.
                pushed = await self.source.read() if self._pushed else None
                async with self._lock:
                    frame = pushed or await self.source.read()
                    self._set_available()
                    backoff.reset()
                    await self._inspect(frame)
            except SourceExhaustedError:
                _LOGGER.info("station %s: %s has no more frames", self.id, self.source.describe())
                self.finished.set()
                return
            except ImageDecodeError as exc:
                self.frame_errors += 1
                _LOGGER.warning("station %s: skipped a bad frame: %s", self.id, exc)
                self._mark_state()
            except (SourceError, ModelError) as exc:
                self._set_unavailable(str(exc))
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception as exc:  # a bug must cost one frame, not the station
                _LOGGER.exception("station %s: unexpected error", self.id)
                self._set_unavailable(f"internal error: {type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff.next_delay())
                continue
            if interval:
                await asyncio.sleep(max(0.0, started + interval - loop.time()))
            else:
                await asyncio.sleep(0)  # let the other stations and the output worker run

    async def inspect_now(
        self,
        *,
        part_id: str | None = None,
        lot_id: str | None = None,
        identify: Awaitable[tuple[str | None, str | None]] | None = None,
        timeout: float = 30.0,
        wait_recorded: bool = False,
    ) -> InspectionResult:
        """Inspect one fresh frame now (a trigger: a part arrived, a button was pressed).

        `identify`: the part and lot id still being read (from a PLC), awaited once the frame
        is captured; if that fails, the part is inspected without them. `wait_recorded`:
        return once the inspection and its incidents are stored and told (a caller that reads
        them next: the HTTP API, Home Assistant), not as soon as the verdict is known (a PLC)."""
        if not self.enabled:
            raise RefusedError(f"station {self.id} is disabled")
        if isinstance(self.source, PushSource):
            # nothing to take a picture with: it inspects what is handed in
            raise RefusedError(
                f"station {self.id} inspects the pictures pushed to it: "
                f"send one (POST /api/stations/{self.id}/frames)"
            )
        async with asyncio.timeout(timeout), self._lock:
            requested = time.monotonic()
            try:
                frame = await self.source.read(not_before=requested)
            except ImageDecodeError:
                self.frame_errors += 1
                self._mark_state()
                raise
            except SourceError as exc:
                self._set_unavailable(str(exc))
                raise
            self._set_available()
            if identify is not None:
                try:
                    part_id, lot_id = await identify
                except (EdgeInspectorError, OSError) as exc:
                    _LOGGER.warning(
                        "station %s: the part's ids were not read (%s); inspected without",
                        self.id,
                        exc,
                    )
            if part_id is not None or lot_id is not None:
                frame = Frame(
                    frame.image,
                    frame.seq,
                    frame.origin,
                    frame.captured_at,
                    frame.timestamp,
                    part_id=part_id or frame.part_id,
                    lot_id=lot_id or frame.lot_id,
                )
            recorded = asyncio.get_running_loop().create_future() if wait_recorded else None
            result = await self._inspect(frame, recorded=recorded)
        if recorded is not None:
            await self._until_recorded(recorded)
        return result

    async def inspect_image(
        self, image: bytes, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        """Inspect a picture handed in (push stations: Home Assistant cameras, the HTTP API)."""
        if not isinstance(self.source, PushSource):
            raise RefusedError(f"station {self.id} does not take pushed images")
        if not self.enabled:
            raise RefusedError(f"station {self.id} is disabled")
        recorded = asyncio.get_running_loop().create_future()
        async with self._lock:
            # Not through the hand-off: a continuous station's loop would race us for it.
            frame = await self.source.frame(image, part_id=part_id, lot_id=lot_id)
            self._set_available()
            result = await self._inspect(frame, recorded=recorded)
        # Answered once stored: the caller may read the inspection or its incident next.
        await self._until_recorded(recorded)
        return result

    async def _until_recorded(self, recorded: asyncio.Future[None]) -> None:
        """Wait for the output worker to store and tell an inspection; a store that hangs
        delays the answer by at most `_RECORD_WAIT_S` (the verdict is right either way)."""
        done, _ = await asyncio.wait({recorded}, timeout=_RECORD_WAIT_S)
        if not done:
            _LOGGER.warning(
                "station %s: the inspection was not stored within %.0f s; answered anyway",
                self.id,
                _RECORD_WAIT_S,
            )

    async def _inspect(
        self, frame: Frame, *, recorded: asyncio.Future[None] | None = None
    ) -> InspectionResult:
        loop = asyncio.get_running_loop()
        self.frames += 1
        now = loop.time()
        if self._last_frame_at is not None and self.available:
            gap = now - self._last_frame_at
            self._frame_period = (
                gap if not self._frame_period else 0.9 * self._frame_period + 0.1 * gap
            )
        self._last_frame_at = now
        width, height = frame.size

        def rules(raw: RawDetections) -> tuple[list[Detection], list[Confirmation], float]:
            # on the inference thread, right after the model (InferenceQueue.infer); one frame
            # of this station at a time (the station's lock), so the tracker is never shared
            # (`skip` from the event loop only leaves a count for the next update)
            started = time.perf_counter()
            detections = self.rules.apply(raw, width, height)
            detections, confirmed = self._tracker.update(detections, frame.image)
            return detections, confirmed, (time.perf_counter() - started) * 1000

        batched = await self._inference.infer(
            frame.image, conf=self._conf_floor, client=self.id, after=rules
        )
        raw = batched.detections
        detections, confirmed, rules_ms = batched.after
        self.last_view = (frame, tuple(detections))
        self.view_seq += 1
        now = loop.time()
        total_ms = (now - frame.captured_at) * 1000
        verdict = Verdict.FAIL if any(d.defect for d in detections) else Verdict.PASS
        inspection_id = _new_id()
        incidents = [
            self._incident(c, detections, inspection_id, frame, total_ms) for c in confirmed
        ]
        result = InspectionResult(
            inspection_id=inspection_id,
            station_id=self.id,
            timestamp=frame.timestamp,
            frame_seq=frame.seq,
            part_id=frame.part_id,
            lot_id=frame.lot_id,
            verdict=verdict,
            detections=tuple(detections),
            new_incident_ids=tuple(i.incident_id for i in incidents),
            image_width=width,
            image_height=height,
            model=self._inference.detector.info,
            latency=Latency(
                queue_ms=round(max(0.0, batched.started_at - frame.captured_at) * 1000, 3),
                preprocess_ms=round(raw.preprocess_ms, 3),
                inference_ms=round(raw.inference_ms, 3),
                postprocess_ms=round(raw.postprocess_ms, 3),
                rules_ms=round(rules_ms, 3),
                total_ms=round(total_ms, 3),
                batch_size=batched.batch_size,
            ),
        )
        self.inspections += 1
        self.last_latency_ms = result.latency.total_ms
        self._state_dirty = True  # counters: published at most once a second
        if (verdict is Verdict.FAIL) != self.defect_present:
            self.defect_present = verdict is Verdict.FAIL
            self._mark_state(urgent=True)
        if verdict is Verdict.FAIL:
            self.defects += 1
        for incident in incidents:
            self.incidents += 1
            self.last_defect_class = incident.defect_class
            self.last_incident_id = incident.incident_id
            self._state_urgent = True
        keep_frame = (
            bool(incidents and self.config.images.save != "none")
            or self.config.images.save == "all"
        )
        await self._sink.on_verdict(result)  # the line's controller first: it is waiting
        self._enqueue(_Output(result, incidents, frame if keep_frame else None, recorded))
        return result

    def _incident(
        self,
        confirmation: Confirmation,
        detections: list[Detection],
        inspection_id: str,
        frame: Frame,
        latency_ms: float,
    ) -> Incident:
        shown = [detections[i] for i in confirmation.indices]
        best = max(shown, key=lambda d: d.confidence)
        return Incident(
            incident_id=_new_id(),
            station_id=self.id,
            station_name=self.config.name,
            created_at=frame.timestamp,
            inspection_id=inspection_id,
            part_id=frame.part_id,
            lot_id=frame.lot_id,
            defect_class=confirmation.class_name,
            confidence=best.confidence,
            boxes=tuple(d.box for d in shown),
            detections=tuple(shown),
            track_id=confirmation.track_id,
            model=self._inference.detector.info,
            latency_ms=round(latency_ms, 3),
            vlm=None
            if self._vlm_initial is None
            else self._vlm_initial.model_copy(update={"updated_at": frame.timestamp}),
        )

    # -- output -----------------------------------------------------------------------------

    def _enqueue(self, output: _Output) -> None:
        if len(self._outputs) >= _OUTPUT_LIMIT:
            # Overflow policy: drop the oldest plain inspection; incidents are never dropped.
            for index, queued in enumerate(self._outputs):
                if queued is not None and not queued.incidents:
                    del self._outputs[index]
                    _settle(queued.recorded)
                    self.dropped_outputs += 1
                    if self.dropped_outputs in (1, 10, 100) or self.dropped_outputs % 1000 == 0:
                        _LOGGER.warning(
                            "station %s: output is behind, dropped %d inspection records",
                            self.id,
                            self.dropped_outputs,
                        )
                    break
        self._outputs.append(output)
        self._output_ready.set()

    async def _output_worker(self) -> None:
        while True:
            await self._output_ready.wait()
            self._output_ready.clear()
            while self._outputs:
                output = self._outputs.popleft()
                if output is None:  # stop() asked for the end
                    await self._publish_state(force=True)
                    return
                try:
                    await self._deliver(output)
                except EdgeInspectorError as exc:
                    _LOGGER.error(
                        "station %s: could not record inspection %s: %s",
                        self.id,
                        output.result.inspection_id,
                        exc,
                    )
                finally:
                    _settle(output.recorded)
            await self._publish_state()

    async def _deliver(self, output: _Output) -> None:
        loop = asyncio.get_running_loop()
        result = output.result
        images = self.config.images
        if output.frame is not None and images.save == "all" and not output.incidents:
            data = await loop.run_in_executor(
                self._picture_thread(), encode_jpeg, output.frame.image, images.jpeg_quality
            )
            path = await self._store.save_image(
                result.inspection_id,
                self._image_name(result.timestamp, result.inspection_id, "frame"),
                data,
                result.timestamp,
            )
            result = result.model_copy(update={"image_path": path})
        for new in output.incidents:
            incident = new
            if output.frame is not None:
                incident = await self._save_incident_images(new, output.frame, result)
            await self._store.add_incident(incident)  # stored before anyone is told
            await self._sink.on_incident(incident)
        await self._store.add_inspection(result)
        await self._sink.on_inspection(result)

    def _picture_thread(self) -> Executor | None:
        """Where pictures are drawn and encoded: between batches on a CPU model's thread
        (`InferenceQueue.cpu_thread`), else beside the model."""
        return self._inference.cpu_thread or self._executor

    def _image_name(self, moment: datetime, ident: str, kind: str) -> str:
        return f"{self.id}/{moment:%Y-%m-%d}/{moment:%H%M%S}_{ident[:12]}_{kind}.jpg"

    async def _save_incident_images(
        self, incident: Incident, frame: Frame, result: InspectionResult
    ) -> Incident:
        quality = self.config.images.jpeg_quality

        def _encode() -> tuple[bytes, bytes, bytes]:
            # the incident's own defects on top; the frame's other detections as faint context
            drawn = annotate(frame.image, result.detections, confirmed=incident.detections)
            return (
                encode_jpeg(drawn, quality),
                encode_jpeg(crop(frame.image, incident.boxes), quality),
                encode_jpeg(frame.image, quality),
            )

        frame_jpeg, crop_jpeg, raw_jpeg = await asyncio.get_running_loop().run_in_executor(
            self._picture_thread(), _encode
        )
        when, ident = incident.created_at, incident.incident_id
        frame_path = await self._store.save_image(
            ident, self._image_name(when, ident, "frame"), frame_jpeg, when
        )
        crop_path = await self._store.save_image(
            ident, self._image_name(when, ident, "crop"), crop_jpeg, when
        )
        raw_path = await self._store.save_image(
            ident, self._image_name(when, ident, "raw"), raw_jpeg, when
        )
        return incident.model_copy(
            update={
                "frame_path": frame_path,
                "crop_path": crop_path,
                "raw_path": raw_path,
            }
        )

    async def _publish_state(self, *, force: bool = False) -> None:
        # Counters go out at most once a second; availability and enabled changes at once.
        now = time.monotonic()
        if force or self._state_urgent or (self._state_dirty and now - self._last_state_at >= 1.0):
            self._state_dirty = self._state_urgent = False
            self._last_state_at = now
            await self._sink.on_station_state(self.state())
        elif self._state_dirty and self._state_timer is None:
            # Throttled: make sure the latest counters still go out when the station goes quiet.
            self._state_timer = asyncio.get_running_loop().call_later(
                self._last_state_at + 1.0 - now, self._wake_for_state
            )

    def _wake_for_state(self) -> None:
        self._state_timer = None
        self._output_ready.set()
