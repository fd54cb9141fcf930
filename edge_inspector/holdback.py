"""Holding a station's defects back until the VLM has given its verdict on them (`vlm_hold`).

For lines where a false stop costs more than a late one. An incident of such a station is
stored and handed to the VLM enricher at once, as at any station; what announces it (every
other sink's `on_incident`: the MQTT `defect` message, Home Assistant's defect event, trigger
and notification, the websocket, the console) waits for the incident's first update that
settles it: the model's answer (carrying its `verdict`), the model unavailable or skipping it,
or a person's verdict. The defect then goes out as that update has it, and the update follows
as usual, so that `on_incident_update` still means "the model has answered" on every surface.
Without such an update within `max_wait` seconds, the defect goes out marked `unconfirmed` (so
is the stored incident); the model's later answer follows as an ordinary update. An incident
is announced before any update of it, and stopping releases whatever is held, as unconfirmed:
nothing held is lost at shutdown. (A crash while one is held loses its announcement, not the
incident: it is in the store, and the VLM's answer still goes out as an update after the
restart.)

Never held: the inspection's own verdict (`on_verdict`, `on_inspection`: the PLC's result, the
`defect` sensor, the station's counters), which is the detector's call on the part and which a
line's controller waits for; and missed defects (a person's report).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .errors import EdgeInspectorError
from .events import Incident, IncidentState, VlmStatus, VlmVerdict
from .sinks import EventSink, SinkFanout
from .store import Store

__all__ = ["HoldBackFanout"]

_LOGGER = logging.getLogger(__name__)


@dataclass(slots=True)
class _Held:
    incident: Incident  # as the latest update has it
    timer: asyncio.TimerHandle


def _settles(incident: Incident) -> bool:
    """Whether an update ends the wait: the model has classified it (its verdict is known, the
    report may follow), answered otherwise (or cannot), or a person has."""
    vlm = incident.vlm
    return (
        vlm is None
        or vlm.status != VlmStatus.PENDING
        or vlm.verdict is not None
        or incident.state != IncidentState.OPEN
    )


def _unconfirmed(incident: Incident) -> Incident | None:
    vlm = incident.vlm
    if vlm is None or vlm.verdict is not None:
        return None
    unconfirmed = vlm.model_copy(update={"verdict": VlmVerdict.UNCONFIRMED})
    return incident.model_copy(update={"vlm": unconfirmed})


class HoldBackFanout(SinkFanout):
    """The engine's fan-out to its sinks, holding back the defects of the stations in
    `max_wait` (seconds, by station id) until the VLM's verdict. `at_once` picks the sinks that
    hear a held incident at once: the VLM enricher, whose answer the hold waits for."""

    def __init__(
        self,
        sinks: Iterable[EventSink] = (),
        *,
        max_wait: Mapping[str, float],
        store: Store,
        at_once: Callable[[EventSink], bool],
    ) -> None:
        super().__init__(sinks)
        self._max_wait = dict(max_wait)
        self._store = store
        self._at_once = at_once
        self._held: dict[str, _Held] = {}
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self.released_unconfirmed = 0

    @property
    def held(self) -> int:
        """Defects waiting for the model's verdict."""
        return len(self._held)

    def is_held(self, incident_id: str) -> bool:
        """Whether this incident is waiting for the model's verdict (not yet announced)."""
        return incident_id in self._held or incident_id in self._releasing

    def _outward(self, sink: EventSink) -> bool:
        return not self._at_once(sink)

    async def on_incident(self, incident: Incident) -> None:
        wait = self._max_wait.get(incident.station_id)
        vlm = incident.vlm
        if wait is None or vlm is None or vlm.status != VlmStatus.PENDING:
            await super().on_incident(incident)
            return
        ident = incident.incident_id
        # held before the enricher hears of it: its answer must find it here
        timer = asyncio.get_running_loop().call_later(wait, self._expire, ident)
        self._held[ident] = _Held(incident, timer)
        await self._each("on_incident", incident, self._at_once)

    async def on_incident_update(self, incident: Incident) -> None:
        ident = incident.incident_id
        if (releasing := self._releasing.get(ident)) is not None:
            await asyncio.shield(releasing)  # the defect goes out before any update of it
        held = self._held.get(ident)
        if held is None:
            await super().on_incident_update(incident)
        elif _settles(incident):
            del self._held[ident]
            held.timer.cancel()
            await asyncio.shield(self._start_release(incident, then_update=True))
        else:  # still waiting: the release will carry the latest state
            held.incident = incident
            await self._each("on_incident_update", incident, self._at_once)

    def _expire(self, ident: str) -> None:
        held = self._held.pop(ident, None)
        if held is not None:
            _LOGGER.info(
                "station %s: incident %s went out unconfirmed: no verdict from the VLM in %g s",
                held.incident.station_id,
                ident,
                self._max_wait[held.incident.station_id],
            )
            self._start_release(held.incident, then_update=False)

    def _start_release(self, incident: Incident, *, then_update: bool) -> asyncio.Task[None]:
        ident = incident.incident_id
        task = asyncio.create_task(
            self._release(incident, then_update=then_update),
            name=f"edge_inspector release {ident}",
        )
        self._releasing[ident] = task
        task.add_done_callback(lambda done: self._released(ident, done))
        return task

    def _released(self, ident: str, task: asyncio.Task[None]) -> None:
        self._releasing.pop(ident, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _LOGGER.error("incident %s: its release failed: %s", ident, exc, exc_info=exc)

    async def _release(self, incident: Incident, *, then_update: bool) -> None:
        if _unconfirmed(incident) is not None:
            incident = await self._mark_unconfirmed(incident)
        if incident.vlm is not None and incident.vlm.verdict == VlmVerdict.UNCONFIRMED:
            self.released_unconfirmed += 1
        await self._each("on_incident", incident, self._outward)
        if then_update:
            await super().on_incident_update(incident)

    async def _mark_unconfirmed(self, incident: Incident) -> Incident:
        """The incident as stored, `unconfirmed` unless the model's verdict got there first."""
        try:
            stored = await self._store.modify_incident(incident.incident_id, _unconfirmed)
        except EdgeInspectorError as exc:
            _LOGGER.error(
                "incident %s: cannot record it as unconfirmed: %s", incident.incident_id, exc
            )
            stored = None
        if stored is not None and stored.vlm is not None and stored.vlm.verdict is not None:
            return stored
        return _unconfirmed(incident) or incident

    async def release_held(self) -> None:
        """Release every held defect now, as unconfirmed, oldest first (the engine stops)."""
        while self._held:
            ident = next(iter(self._held))
            held = self._held.pop(ident)
            held.timer.cancel()
            await self._start_release(held.incident, then_update=False)
        if self._releasing:
            await asyncio.gather(*self._releasing.values(), return_exceptions=True)
