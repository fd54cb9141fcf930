"""Quality figures, one definition each, for every way they leave the engine.

Counts, defect rate, yield, the Pareto of defect classes, the p-chart, operators'
false-reject and false-accept rates, over a time range said the way people say it ("this
shift", "last shift", "today", "since 6am", "the last 2 hours"). The HTTP API
(`GET /api/quality`), MQTT (retained `<base>/<station>/kpi`, `<base>/quality` and
`<base>/shift_report`), Home Assistant's sensors, services, Assist answers and dashboard card
all show what `quality_report` computes here, so they agree to the last decimal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import EdgeInspectorError, InputError, StationNotFoundError
from .events import PChart, QualityReport, StationQuality
from .sinks import EventSink
from .tasks import cancel

if TYPE_CHECKING:
    from .config import QualityConfig
    from .events import Incident, InspectionResult
    from .store.history import ClassCount, FeedbackCounts, InspectionCounts

__all__ = [
    "PERIOD_HELP",
    "Period",
    "PeriodError",
    "QualityMonitor",
    "QualitySource",
    "Shifts",
    "p_chart",
    "quality_report",
]

_LOGGER = logging.getLogger(__name__)

PERIOD_HELP = (
    "today, yesterday, this shift, last shift, last hour, last N hours, last N minutes, "
    "this week, since HH:MM (or since 6am), or an ISO 8601 date and time"
)
# The p-chart: the last hour (the subgroup) against the 7 days before it (the centre line).
BASELINE = timedelta(days=7)
SUBGROUP = timedelta(hours=1)
MIN_BASELINE = 100  # inspections in the baseline, and in the subgroup, for a verdict
MIN_SUBGROUP = 20
_PERIOD_CHARS = 100  # the longest range said in words (the configuration's `period` too)
_IDLE_REFRESH_S = 60.0  # without inspections the KPIs still roll ("the last hour") this often


class PeriodError(InputError):
    """A time range that cannot be understood."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_period")


@dataclass(frozen=True, slots=True)
class Period:
    """A time range; `until` None means up to now."""

    label: str
    since: datetime
    until: datetime | None = None


# -- what people say -------------------------------------------------------------------------

_WORD_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "twenty four": 24,
}
_LAST_N = re.compile(
    r"\b(?:last|past)\s+(?:(\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|twelve|"
    r"twenty four)\s+)?(hour|hours|minute|minutes|min|mins|day|days)\b"
)
_SINCE = re.compile(
    r"\bsince\s+(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.|o'?clock)?(?=\s|$|[?.!,])"
)


def local_zone() -> tzinfo:
    """This machine's time zone, by name where it can be found (so that DST is right): `TZ`,
    the zone `/etc/localtime` links to, `/etc/timezone`; else its current offset, with a
    warning (set `quality.timezone`)."""
    candidates = [os.environ.get("TZ", "").removeprefix(":")]
    with contextlib.suppress(OSError):
        target = str(Path("/etc/localtime").resolve())
        candidates.append(target.partition("zoneinfo/")[2])
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        if name:
            with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
                return ZoneInfo(name)
    zone = datetime.now().astimezone().tzinfo or ZoneInfo("UTC")
    _LOGGER.warning(
        "this machine's time zone has no name here: shifts follow %s, which does not change "
        "for daylight saving time; set quality.timezone (like Europe/Berlin)",
        zone,
    )
    return zone


class Shifts:
    """The plant's shifts and time zone: what "this shift", "today" or "since 6am" mean."""

    def __init__(
        self,
        starts: Sequence[time],
        zone: tzinfo,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.starts = sorted(set(starts)) or [time(0)]
        self.zone = zone
        self._clock = clock

    @classmethod
    def from_config(cls, config: QualityConfig) -> Shifts:
        starts = [time(int(s[:2]), int(s[3:])) for s in config.shifts]
        return cls(starts, ZoneInfo(config.timezone) if config.timezone else local_zone())

    def now(self) -> datetime:
        return self._clock() if self._clock is not None else datetime.now(self.zone)

    def shift(self, now: datetime, back: int = 0) -> tuple[datetime, datetime]:
        """The shift `back` shifts before the one running at `now`: (start, end). Compared as
        instants: across a DST change a wall-clock time can come twice, or not at all."""
        day = now.astimezone(self.zone).date()
        moments = sorted(
            {
                datetime.combine(day + timedelta(days=d), s, tzinfo=self.zone).astimezone(UTC)
                for d in (-2, -1, 0, 1)
                for s in self.starts
            }
        )
        instant = now.astimezone(UTC)
        current = max(i for i, m in enumerate(moments) if m <= instant)
        start, end = moments[current - back], moments[current - back + 1]
        return start.astimezone(self.zone), end.astimezone(self.zone)

    def period(self, text: str | None, now: datetime | None = None) -> Period:
        """The time range a phrase names; none means today. PeriodError if not understood
        (or longer than a phrase: 100 characters, from any caller)."""
        if text is not None and len(text) > _PERIOD_CHARS:
            raise PeriodError(f"a time range is at most {_PERIOD_CHARS} characters")
        now = (now or self.now()).astimezone(self.zone)
        today = datetime.combine(now.date(), time(0), tzinfo=self.zone)
        phrase = " ".join((text or "").lower().replace("_", " ").split())
        if (day := _named_day(phrase, today)) is not None:
            return day
        if "shift" in phrase:
            back = 1 if re.search(r"\b(last|previous)\b", phrase) else 0
            start, end = self.shift(now, back)
            return Period("the last shift", start, end) if back else Period("this shift", start)
        if match := _LAST_N.search(phrase):
            return _last_n(match, now)
        if match := _SINCE.search(phrase):
            return _since_time(match, now)
        return _iso(phrase, now, text)


def _named_day(phrase: str, today: datetime) -> Period | None:
    """ "today" (or nothing), "yesterday", "this week"."""
    if phrase in ("", "today", "so far today", "for today"):
        return Period("today", today)
    if phrase == "yesterday":
        return Period("yesterday", _days(today, -1), today)
    if phrase in ("this week", "the week", "week"):
        return Period("this week", _days(today, -today.weekday()))
    return None


def _days(midnight: datetime, days: int) -> datetime:
    """Midnight `days` days away (a calendar day, 23 or 25 hours across a DST change)."""
    return datetime.combine(midnight.date() + timedelta(days=days), time(0), midnight.tzinfo)


def _last_n(match: re.Match[str], now: datetime) -> Period:
    """ "the last 2 hours", "last minute", "past three days"."""
    count_text, unit = match.groups()
    count = _WORD_NUMBERS[count_text] if count_text in _WORD_NUMBERS else int(count_text or 1)
    if count > 100_000:
        raise PeriodError(f"{match[0]!r} reaches back too far")
    if unit.startswith("h"):
        delta, name = timedelta(hours=count), "hour"
    elif unit.startswith("d"):
        delta, name = timedelta(days=count), "day"
    else:
        delta, name = timedelta(minutes=count), "minute"
    label = f"the last {name}" if count == 1 else f"the last {count} {name}s"
    return Period(label, (now.astimezone(UTC) - delta).astimezone(now.tzinfo))  # real hours


def _since_time(match: re.Match[str], now: datetime) -> Period:
    """ "since 6am", "since 14:30": the last time the clock showed it."""
    hour, minute, suffix = int(match[1]), int(match[2] or 0), (match[3] or "").replace(".", "")
    if suffix == "pm" and hour < 12:
        hour += 12
    elif suffix == "am" and hour == 12:
        hour = 0
    if hour > 23 or minute > 59:
        raise PeriodError(f"{match[0]!r} is not a time of day")
    since = datetime.combine(now.date(), time(hour, minute), tzinfo=now.tzinfo)
    if since > now:  # "since 22:00" said at 02:00 means last night
        since = datetime.combine(now.date() - timedelta(days=1), time(hour, minute), now.tzinfo)
    return Period(f"since {since:%H:%M}", since)


def _iso(phrase: str, now: datetime, text: str | None) -> Period:
    """An ISO 8601 date and time (local time when it names no zone)."""
    if "-" in phrase:
        with contextlib.suppress(ValueError):
            since = datetime.fromisoformat(phrase.replace(" ", "T", 1).upper())
            since = since if since.tzinfo else since.replace(tzinfo=now.tzinfo)
            if not 1970 <= since.year <= 2999:
                raise PeriodError(f"{text!r} is not a date this engine has inspected on")
            return Period(f"since {since.astimezone(now.tzinfo):%Y-%m-%d %H:%M}", since)
    raise PeriodError(f"I do not understand the time range {text!r}; say {PERIOD_HELP}")


# -- the figures -----------------------------------------------------------------------------


class QualitySource(Protocol):
    """Where the counts come from (the store)."""

    async def inspection_counts(
        self, *, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> InspectionCounts: ...

    async def counts_by_class(
        self, *, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> list[ClassCount]: ...

    async def feedback_counts(
        self, *, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> FeedbackCounts: ...


def _percent(numerator: int, denominator: int) -> float | None:
    return round(100 * numerator / denominator, 2) if denominator else None


def p_chart(
    baseline_inspections: int, baseline_failed: int, inspections: int, failed: int
) -> PChart | None:
    """3-sigma limits p̄ ± 3·sqrt(p̄(1-p̄)/n) around the baseline's rate p̄, for a subgroup of
    n inspections; None when there is too little data for a verdict."""
    if baseline_inspections < MIN_BASELINE or inspections < MIN_SUBGROUP:
        return None
    p_bar = baseline_failed / baseline_inspections
    sigma = math.sqrt(p_bar * (1 - p_bar) / inspections)
    ucl = min(1.0, p_bar + 3 * sigma)
    rate = failed / inspections
    return PChart(
        p_bar=round(p_bar, 6),
        ucl=round(ucl, 6),
        lcl=round(max(0.0, p_bar - 3 * sigma), 6),
        rate=round(rate, 6),
        n=inspections,
        out_of_control=rate > ucl,
    )


@dataclass(slots=True)
class _Tally:
    """One station's counts (or the sum of all) before they become a `StationQuality`."""

    inspections: int = 0
    failed: int = 0
    confirmed: int = 0
    rejected: int = 0
    missed: int = 0
    baseline: tuple[int, int] = (0, 0)
    subgroup: tuple[int, int] = (0, 0)

    def add(self, other: _Tally) -> None:
        self.inspections += other.inspections
        self.failed += other.failed
        self.confirmed += other.confirmed
        self.rejected += other.rejected
        self.missed += other.missed
        self.baseline = (
            self.baseline[0] + other.baseline[0],
            self.baseline[1] + other.baseline[1],
        )
        self.subgroup = (
            self.subgroup[0] + other.subgroup[0],
            self.subgroup[1] + other.subgroup[1],
        )

    def figures(
        self, station_id: str | None, name: str, by_class: dict[str, int]
    ) -> StationQuality:
        rate = _percent(self.failed, self.inspections)
        return StationQuality(
            station_id=station_id,
            name=name,
            inspections=self.inspections,
            failed=self.failed,
            incidents=sum(by_class.values()),
            by_class=by_class,
            confirmed=self.confirmed,
            rejected=self.rejected,
            missed=self.missed,
            defect_rate_percent=rate,
            yield_percent=None if rate is None else round(100 - rate, 2),
            false_reject_rate_percent=_percent(self.rejected, self.confirmed + self.rejected),
            false_accept_rate_percent=_percent(self.missed, self.confirmed + self.missed),
            p_chart=p_chart(*self.baseline, *self.subgroup),
        )


def _pareto(counts: Mapping[str, int]) -> dict[str, int]:
    """Most frequent first, then by name."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


type Baseline = Callable[[str, datetime], Awaitable[InspectionCounts]]
"""A station's inspections in the p-chart's baseline: the 7 days before the hour before `end`."""


def _baseline(source: QualitySource) -> Baseline:
    async def count(station_id: str, end: datetime) -> InspectionCounts:
        return await source.inspection_counts(
            station_id=station_id, since=end - SUBGROUP - BASELINE, until=end - SUBGROUP
        )

    return count


async def _tally(  # noqa: PLR0917 (one station's part of quality_report)
    source: QualitySource,
    station_id: str,
    since: datetime,
    until: datetime | None,
    end: datetime,
    baseline: Baseline,
) -> tuple[_Tally, dict[str, int]]:
    """One station's counts from `since` to `until` (None: up to now, whatever was recorded
    last), and its p-chart's windows before `end`."""
    counts = await source.inspection_counts(station_id=station_id, since=since, until=until)
    classes = await source.counts_by_class(station_id=station_id, since=since, until=until)
    feedback = await source.feedback_counts(station_id=station_id, since=since, until=until)
    end = end.astimezone(UTC)  # the p-chart's hours are real hours, across a DST change
    base = await baseline(station_id, end)
    current = await source.inspection_counts(
        station_id=station_id, since=end - SUBGROUP, until=until
    )
    tally = _Tally(
        inspections=counts.inspections,
        failed=counts.failed,
        confirmed=feedback.confirmed,
        rejected=feedback.rejected,
        missed=feedback.missed,
        baseline=(base.inspections, base.failed),
        subgroup=(current.inspections, current.failed),
    )
    return tally, {c.defect_class: c.count for c in classes}


async def quality_report(
    source: QualitySource,
    stations: Mapping[str, str],
    period: Period,
    *,
    now: datetime,
    baseline: Baseline | None = None,
) -> QualityReport:
    """The figures of each station (id → name) over `period`, and of all together.
    `baseline`: the p-chart's baseline counts (default: counted from `source`)."""
    complete = period.until is not None and period.until.timestamp() <= now.timestamp()
    until = period.until if complete and period.until is not None else now
    rows = []
    total = _Tally()
    all_classes: dict[str, int] = {}
    for station_id, name in stations.items():
        tally, by_class = await _tally(
            source, station_id, period.since, period.until, until, baseline or _baseline(source)
        )
        rows.append(tally.figures(station_id, name, _pareto(by_class)))
        total.add(tally)
        for cls, n in by_class.items():
            all_classes[cls] = all_classes.get(cls, 0) + n
    return QualityReport(
        period=period.label,
        since=period.since,
        until=until,
        complete=complete,
        stations=tuple(rows),
        total=total.figures(None, "total", _pareto(all_classes)),
        computed_at=now,
    )


class ShiftMemory(Protocol):
    """Where the monitor keeps the last shift it reported, across restarts (the store)."""

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...


_REPORTED = "quality.last_shift_reported"  # the start of the current shift when it was


class QualityMonitor(EventSink):
    """Keeps the published KPIs current: recomputes them (over `quality.period`) soon after
    inspections and verdicts arrive, at most every `refresh_s`, and at least every minute so
    that rolling ranges roll. When a shift has ended (`grace_s` after, so that its last frames
    are in), reports it, once, also when it ended while the engine was stopped (the last one
    then). Both go to `sink` (`on_quality`, `on_shift_report`)."""

    def __init__(
        self,
        source: QualitySource,
        stations: Mapping[str, str],
        config: QualityConfig,
        sink: EventSink,
        *,
        memory: ShiftMemory | None = None,
        shifts: Shifts | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.source = source
        self.stations = dict(stations)
        self.config = config
        self.shifts = shifts or Shifts.from_config(config)
        self.sink = sink
        self.memory = memory
        self.grace_s = grace_s
        self.latest: QualityReport | None = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._baselines: dict[str, tuple[float, InspectionCounts]] = {}

    async def report(
        self, period: str | None = None, station_id: str | None = None
    ) -> QualityReport:
        """The figures over a range said in words (default: the published one)."""
        now = self.shifts.now()
        span = self.shifts.period(period or self.config.period, now)
        if station_id is not None and station_id not in self.stations:
            raise StationNotFoundError(f"no station {station_id!r}")
        stations = self.stations if station_id is None else {station_id: self.stations[station_id]}
        return await quality_report(self.source, stations, span, now=now, baseline=self._baseline)

    async def _baseline(self, station_id: str, end: datetime) -> InspectionCounts:
        """The p-chart's 7-day baseline, counted at most once a minute per station (it moves
        by a minute in a week, and counting it reads every inspection of the week)."""
        moment = end.timestamp()
        cached = self._baselines.get(station_id)
        if cached is not None and 0 <= moment - cached[0] < _IDLE_REFRESH_S:
            return cached[1]
        counts = await _baseline(self.source)(station_id, end)
        self._baselines[station_id] = (moment, counts)
        return counts

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="edge_inspector quality")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def on_inspection(self, result: InspectionResult) -> None:
        self._dirty.set()

    async def on_incident_update(self, incident: Incident) -> None:
        self._dirty.set()  # a verdict changes the false-reject rate

    async def on_missed_defect(self, incident: Incident) -> None:
        self._dirty.set()

    async def _last_reported(self) -> datetime:
        """The start of the shift that was running when the last shift report went out; the
        current shift's when none ever did (nothing to catch up on)."""
        current = self.shifts.shift(self.shifts.now())[0]
        stored = await self.memory.get_meta(_REPORTED) if self.memory is not None else None
        if stored is None:
            return current
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(stored)
        return current

    async def _report_ended_shift(
        self, now: datetime, started: datetime, reported: datetime
    ) -> datetime:
        """Report the shift that ended last, unless it was reported or its last frames may
        still be on their way; what is reported now."""
        if started.timestamp() <= reported.timestamp():
            return reported
        if now.timestamp() < started.timestamp() + self.grace_s:
            return reported
        ended = Period("the last shift", *self.shifts.shift(now, 1))
        report = await quality_report(
            self.source, self.stations, ended, now=now, baseline=self._baseline
        )
        await self.sink.on_shift_report(report)
        if self.memory is not None:
            await self.memory.set_meta(_REPORTED, started.isoformat())
        return started

    def _wake_after(self, now: datetime, ends: datetime, due: datetime | None) -> float:
        """Seconds until the figures must be computed again without new inspections: rolling
        ranges roll every minute; a shift's end (and its report, `grace_s` later)."""
        wake = min(_IDLE_REFRESH_S, ends.timestamp() - now.timestamp())
        if due is not None:
            wake = min(wake, due.timestamp() + self.grace_s - now.timestamp())
        return max(0.05, wake)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            reported = await self._last_reported()
        except EdgeInspectorError as exc:
            _LOGGER.warning("the last shift report is not known: %s", exc)
            reported = self.shifts.shift(self.shifts.now())[0]
        while True:
            now = self.shifts.now()
            started, ends = self.shifts.shift(now)
            computed = loop.time()
            try:
                reported = await self._report_ended_shift(now, started, reported)
                self.latest = await self.report()
                await self.sink.on_quality(self.latest)
            except EdgeInspectorError as exc:  # the store is closing, or a disk error
                _LOGGER.warning("quality figures not updated: %s", exc)
            except Exception:  # a bug must not freeze the figures for good
                _LOGGER.exception("quality figures not updated")
            due = started if started.timestamp() > reported.timestamp() else None
            deadline = computed + self._wake_after(now, ends, due)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._dirty.wait()
                    # new inspections: compute again, but not more often than refresh_s
                    await asyncio.sleep(max(0.0, computed + self.config.refresh_s - loop.time()))
            self._dirty.clear()
