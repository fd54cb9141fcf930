"""The engine's outward port: where inspections, incidents and station states go.

Home Assistant, MQTT, the HTTP API and the console each implement `EventSink`. A sink that
fails is logged and skipped; it never stops detection or the other sinks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from .events import Incident, InspectionResult, OperatorAlert, QualityReport, StationState

__all__ = ["EventSink", "SinkFanout"]

_LOGGER = logging.getLogger(__name__)


class EventSink:
    """Receives what the engine produces. Override what you need; each call may be slow."""

    async def on_inspection(self, result: InspectionResult) -> None:
        """Every inspection (a frame and its verdict)."""

    async def on_verdict(self, result: InspectionResult) -> None:
        """An inspection's verdict as soon as it is known, before its incident and images are
        stored (for a line's controller, which must not wait for them). `on_inspection`
        follows with the same result once it is recorded."""

    async def on_incident(self, incident: Incident) -> None:
        """A new incident, already in the store."""

    async def on_incident_update(self, incident: Incident) -> None:
        """An incident that changed later (acknowledged, enriched)."""

    async def on_missed_defect(self, incident: Incident) -> None:
        """A defect a person found that a station passed, already in the store (a confirmed
        incident marked `extra.missed`): not a new detection, so told apart from those."""

    async def on_station_state(self, state: StationState) -> None:
        """A station's state: availability, enabled, counters."""

    async def on_alert(self, alert: OperatorAlert) -> None:
        """A message for the operator, or a request to confirm an action (from the VLM)."""

    async def on_quality(self, report: QualityReport) -> None:
        """The published quality figures, recomputed (every station's, over the configured
        range: `quality.period`, this shift by default)."""

    async def on_shift_report(self, report: QualityReport) -> None:
        """A shift has ended: its figures."""

    async def on_connection(self, connected: bool) -> None:
        """An engine service went away (False) or is back (True): told by a client of one
        (`RemoteEngine`), never by the engine in this process."""


class SinkFanout(EventSink):
    """Hands each event to every sink concurrently; a failing sink is logged, not raised."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self._sinks: list[EventSink] = list(sinks)
        self.failures = 0

    def add(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def remove(self, sink: EventSink) -> None:
        self._sinks.remove(sink)

    async def _each(
        self, method: str, payload: object, only: Callable[[EventSink], bool] | None = None
    ) -> None:
        # only the sinks that listen for this event (not EventSink's no-op): a station calls
        # this for every frame; `only` narrows them further
        base = getattr(EventSink, method)
        sinks = [
            sink
            for sink in self._sinks
            if getattr(type(sink), method) is not base and (only is None or only(sink))
        ]
        if not sinks:
            return
        # Eager tasks: a sink that has nothing to wait for (most, on most frames) finishes
        # here, without a task scheduled on the loop and a loop turn per sink and frame.
        loop = asyncio.get_running_loop()
        tasks = [
            asyncio.Task(getattr(sink, method)(payload), loop=loop, eager_start=True)
            for sink in sinks
        ]
        waiting = [task for task in tasks if not task.done()]
        try:
            if waiting:
                # cancelled, it cancels the sinks still waiting and waits for their cleanup
                await asyncio.gather(*waiting, return_exceptions=True)
        finally:
            cancelled = self._report(method, sinks, tasks)
        if cancelled:
            raise asyncio.CancelledError

    def _report(self, method: str, sinks: list[EventSink], tasks: list[asyncio.Task[None]]) -> bool:
        """Log and count the sinks that failed; whether one was cancelled."""
        cancelled = False
        for sink, task in zip(sinks, tasks, strict=True):
            if not task.done():
                continue
            if task.cancelled():
                cancelled = True
                continue
            error = task.exception()
            if error is not None:
                self.failures += 1
                _LOGGER.error(
                    "%s.%s failed: %s", type(sink).__name__, method, error, exc_info=error
                )
        return cancelled

    async def on_inspection(self, result: InspectionResult) -> None:
        await self._each("on_inspection", result)

    async def on_verdict(self, result: InspectionResult) -> None:
        await self._each("on_verdict", result)

    async def on_incident(self, incident: Incident) -> None:
        await self._each("on_incident", incident)

    async def on_incident_update(self, incident: Incident) -> None:
        await self._each("on_incident_update", incident)

    async def on_missed_defect(self, incident: Incident) -> None:
        await self._each("on_missed_defect", incident)

    async def on_station_state(self, state: StationState) -> None:
        await self._each("on_station_state", state)

    async def on_alert(self, alert: OperatorAlert) -> None:
        await self._each("on_alert", alert)

    async def on_quality(self, report: QualityReport) -> None:
        await self._each("on_quality", report)

    async def on_shift_report(self, report: QualityReport) -> None:
        await self._each("on_shift_report", report)

    async def on_connection(self, connected: bool) -> None:
        await self._each("on_connection", connected)
