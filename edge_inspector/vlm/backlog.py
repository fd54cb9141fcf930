"""The VLM's backlog: which waiting incident the model answers next when it falls behind.

A model that takes tens of seconds an incident falls hours behind a burst of defects if it
answers them in order. With the policy on (`vlm.backlog_policy`) the backlog:

- orders incidents by level, then the newest first within a level (a report on what happens
  now is worth more than one on what happened an hour ago). The level, by urgency: high
  severity and triggered, then high severity, then triggered, then the others. High severity:
  the detector is at least `vlm.priority_confidence` sure of it (the detector has no severity
  of its own, so its confidence stands for it); it goes before a merely triggered one so that
  a triggered station's routine defects cannot hold a critical one back. Within an urgency, a
  defect's first incident goes before a repeat (of a defect answered lately);
- coalesces a repeat into the group of incidents waiting or being answered for the same defect
  (the same station and class within `vlm.coalesce_window` seconds of the group's newest, or the
  same track): one model call answers the whole group;
- holds at most `vlm.queue_size` incidents waiting for their turn. A full backlog lets its
  lowest-priority incident go to take a higher one, and refuses a newcomer that is lowest. What
  it lets go or refuses is handed back to the caller, which leaves it `pending` in the store
  for a later sweep: nothing is dropped.

With the policy off it is first in, first out, one incident a call, and a full backlog refuses
newcomers, as the enricher's queue did before. Nothing here reads a clock or does I/O: the
incidents' times come in with them, and the enricher acts on what the backlog answers.
"""

from __future__ import annotations

import bisect
import collections
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from ..events import Incident

__all__ = ["Backlog", "Group", "Offer", "Waiting"]

_MAX_REMEMBERED_TRACKS = 4096

type Key = tuple[int, float, int]  # the smaller goes first


@dataclass(frozen=True, slots=True)
class Waiting:
    """An incident waiting for the model, with what its priority is made of."""

    incident_id: str
    station_id: str
    defect_class: str
    track_id: int | None
    created_at: datetime
    urgency: int  # 0: sure and triggered, 1: sure, 2: triggered, 3: neither
    level: int  # its urgency, a repeat after a first: 0 goes first
    seq: int  # the order it came in
    key: Key


@dataclass(eq=False, slots=True)
class Group:
    """Incidents one model call answers: the first that came and the repeats coalesced into it.
    Once taken (`in_flight`) it still takes repeats, which get the answer of its call."""

    defect: tuple[str, str]  # station and class
    members: list[Waiting]
    key: Key  # its best member's
    in_flight: bool = False

    @property
    def newest(self) -> datetime:
        return max(m.created_at for m in self.members)

    def leader(self, among: Iterable[Waiting]) -> Waiting:
        """The member the group's call is about: the most urgent, then the newest (its
        pictures show the defect as it is now); being a repeat does not count here."""
        return min(among, key=lambda m: (m.urgency, -m.created_at.timestamp(), -m.seq))

    def repeats(self, item: Waiting, window: float) -> bool:
        """`item` is the same defect as this group's (its station and class given)."""
        if item.track_id is not None and any(m.track_id == item.track_id for m in self.members):
            return True
        return abs((item.created_at - self.newest).total_seconds()) <= window


@dataclass(frozen=True, slots=True)
class Offer:
    """What became of an incident offered to the backlog."""

    queued: bool  # False: refused, the backlog is full of incidents that go before it
    coalesced: bool = False  # it joined a group: another incident's call answers it
    displaced: Waiting | None = None  # let go to make room (it waits in the store)


class Backlog:
    """Incidents waiting for the model, and those being answered."""

    def __init__(
        self,
        size: int,
        *,
        policy: bool = True,
        coalesce_window: float = 60.0,
        priority_confidence: float = 0.8,
    ) -> None:
        self.size = size
        self.policy = policy
        self.coalesce_window = coalesce_window
        self.priority_confidence = priority_confidence
        self.queued = 0  # incidents waiting for their turn (not being answered)
        self._queue: list[Group] = []  # sorted: the next to answer first
        self._flying: list[Group] = []
        self._groups: dict[str, Group] = {}  # every member's group, by incident id
        self._by_defect: dict[tuple[str, str], list[Group]] = {}  # by station and class
        # for telling a repeat: each defect's last incident, and each track's first
        self._last: dict[tuple[str, str], tuple[datetime, str]] = {}
        self._tracks: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Incidents waiting or being answered."""
        return len(self._groups)

    def __contains__(self, incident_id: object) -> bool:
        return incident_id in self._groups

    def members(self) -> Iterator[Waiting]:
        """Every incident waiting or being answered."""
        for group in (*self._queue, *self._flying):
            yield from group.members

    # -- intake ---------------------------------------------------------------------------

    def waiting(self, incident: Incident, *, triggered: bool) -> Waiting:
        """`incident` as it would wait: its level (and, with the policy, whether it repeats
        one seen before, which is remembered)."""
        seq = next(self._seq)
        if not self.policy:
            return Waiting(
                incident.incident_id,
                incident.station_id,
                incident.defect_class,
                incident.track_id,
                incident.created_at,
                0,
                0,
                seq,
                (0, 0.0, seq),
            )
        sure = incident.confidence >= self.priority_confidence
        urgency = (0 if sure else 2) + (0 if triggered else 1)
        level = urgency * 2 + int(self._repeat(incident))
        self._remember(incident)
        return Waiting(
            incident.incident_id,
            incident.station_id,
            incident.defect_class,
            incident.track_id,
            incident.created_at,
            urgency,
            level,
            seq,
            (level, -incident.created_at.timestamp(), -seq),
        )

    def _repeat(self, incident: Incident) -> bool:
        ident = incident.incident_id
        if incident.track_id is not None:
            first = self._tracks.get((incident.station_id, incident.track_id))
            if first is not None and first != ident:
                return True
        last = self._last.get((incident.station_id, incident.defect_class))
        if last is None or last[1] == ident:
            return False
        since = (incident.created_at - last[0]).total_seconds()
        return 0 <= since <= self.coalesce_window

    def _remember(self, incident: Incident) -> None:
        if incident.track_id is not None:
            track = (incident.station_id, incident.track_id)
            self._tracks.setdefault(track, incident.incident_id)
            while len(self._tracks) > _MAX_REMEMBERED_TRACKS:
                self._tracks.popitem(last=False)
        defect = (incident.station_id, incident.defect_class)
        last = self._last.get(defect)
        if last is None or incident.created_at >= last[0]:
            self._last[defect] = (incident.created_at, incident.incident_id)

    def offer(self, item: Waiting) -> Offer:
        """Queue `item`, coalesce it into its defect's group, or refuse it (full)."""
        if item.incident_id in self._groups:
            return Offer(queued=True)
        group = self._match(item) if self.policy else None
        if group is not None and group.in_flight:
            group.members.append(item)
            self._groups[item.incident_id] = group
            return Offer(queued=True, coalesced=True)
        displaced = None
        if self.queued >= self.size:
            best = item.key if group is None else min(item.key, group.key)
            worst = self._queue[-1]
            if not self.policy or best >= worst.key:
                return Offer(queued=False)
            displaced = self._let_go(worst)
            if group is not None and not group.members:
                group = None
        if group is None:
            group = Group((item.station_id, item.defect_class), [item], item.key)
            self._by_defect.setdefault(group.defect, []).append(group)
        else:
            self._unqueue(group)
            group.members.append(item)
            group.key = min(group.key, item.key)
        bisect.insort(self._queue, group, key=lambda g: g.key)
        self._groups[item.incident_id] = group
        self.queued += 1
        return Offer(queued=True, coalesced=len(group.members) > 1, displaced=displaced)

    def _match(self, item: Waiting) -> Group | None:
        for group in self._by_defect.get((item.station_id, item.defect_class), ()):
            if group.repeats(item, self.coalesce_window):
                return group
        return None

    def _let_go(self, group: Group) -> Waiting:
        """Take the lowest-priority member out of a queued group (and the group, if empty)."""
        self._unqueue(group)
        victim = max(group.members, key=lambda m: m.key)
        group.members.remove(victim)
        del self._groups[victim.incident_id]
        self.queued -= 1
        if group.members:
            group.key = min(m.key for m in group.members)
            bisect.insort(self._queue, group, key=lambda g: g.key)
        else:
            self._drop_defect_group(group)
        return victim

    def _unqueue(self, group: Group) -> None:
        index = bisect.bisect_left(self._queue, group.key, key=lambda g: g.key)
        assert self._queue[index] is group
        del self._queue[index]

    # -- the model's side -------------------------------------------------------------------

    def take(self) -> Group | None:
        """The group to answer next (None: nothing waits); it is in flight until `done`."""
        if not self._queue:
            return None
        group = self._queue.pop(0)
        group.in_flight = True
        self.queued -= len(group.members)
        self._flying.append(group)
        return group

    def release(self, group: Group, items: list[Waiting]) -> None:
        """Take these members out of a group in flight (skipped, or no longer waiting)."""
        for item in items:
            group.members.remove(item)
            del self._groups[item.incident_id]

    def done(self, group: Group) -> None:
        """The group's call is over: its members leave the backlog."""
        self._flying.remove(group)
        for item in group.members:
            del self._groups[item.incident_id]
        self._drop_defect_group(group)

    def expire(self, cutoff: datetime) -> list[Waiting]:
        """Take out the incidents waiting for their turn that came before `cutoff`."""
        expired: list[Waiting] = []
        for group in list(self._queue):
            old = [m for m in group.members if m.created_at < cutoff]
            if not old:
                continue
            self._unqueue(group)
            for item in old:
                group.members.remove(item)
                del self._groups[item.incident_id]
            self.queued -= len(old)
            expired += old
            if group.members:
                group.key = min(m.key for m in group.members)
                bisect.insort(self._queue, group, key=lambda g: g.key)
            else:
                self._drop_defect_group(group)
        return expired

    def _drop_defect_group(self, group: Group) -> None:
        groups = self._by_defect[group.defect]
        groups.remove(group)
        if not groups:
            del self._by_defect[group.defect]
