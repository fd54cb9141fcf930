"""The quality figures: time ranges as people say them, the KPIs from a real store, the p-chart,
and the monitor that publishes them and reports each shift as it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge_inspector.config import QualityConfig
from edge_inspector.errors import StationNotFoundError
from edge_inspector.events import IncidentState, QualityReport, Verdict
from edge_inspector.quality import (
    Period,
    PeriodError,
    QualityMonitor,
    Shifts,
    p_chart,
    quality_report,
)
from edge_inspector.sinks import EventSink
from edge_inspector.store import Store
from tests.engine.test_store import _incident, _inspection
from tests.waiting import until

BERLIN = ZoneInfo("Europe/Berlin")
SHIFTS = Shifts([time(6), time(14), time(22)], BERLIN)
NOW = datetime(2026, 11, 27, 9, 30, tzinfo=BERLIN)


def test_time_ranges_are_read_like_people_say_them() -> None:
    today = NOW.replace(hour=0, minute=0)
    assert SHIFTS.period(None, NOW) == Period("today", today)
    assert SHIFTS.period("this shift", NOW) == Period("this shift", NOW.replace(hour=6, minute=0))
    assert SHIFTS.period("last_shift", NOW) == Period(
        "the last shift", today - timedelta(hours=2), NOW.replace(hour=6, minute=0)
    )
    night = NOW.replace(hour=2)
    assert SHIFTS.period("this shift", night).since == today - timedelta(hours=2)
    assert SHIFTS.period("last hour", NOW).since == NOW - timedelta(hours=1)
    assert SHIFTS.period("the last 3 hours", NOW).label == "the last 3 hours"
    assert SHIFTS.period("last_8_hours", NOW).since == NOW - timedelta(hours=8)
    assert SHIFTS.period("since 6am", NOW).since == NOW.replace(hour=6, minute=0)
    assert SHIFTS.period("since 2 pm", NOW).since == today - timedelta(hours=10)
    assert SHIFTS.period("since 06:45", NOW).label == "since 06:45"
    assert SHIFTS.period("yesterday", NOW) == Period("yesterday", today - timedelta(days=1), today)
    assert SHIFTS.period("2026-11-27 08:15", NOW).since == NOW.replace(hour=8, minute=15)
    with pytest.raises(PeriodError, match="do not understand"):
        SHIFTS.period("whenever", NOW)
    with pytest.raises(PeriodError, match="not a time"):
        SHIFTS.period("since 25:00", NOW)
    with pytest.raises(PeriodError, match="at most 100 characters"):  # from any caller
        SHIFTS.period("since 6am " + "x" * 100, NOW)


def test_a_calendar_day_across_a_dst_change_is_23_hours_long() -> None:
    # Berlin went from summer to winter time on 2026-10-25 03:00 (a 25-hour day) and
    # forward on 2026-03-29 (23 hours)
    monday = datetime(2026, 3, 30, 10, 0, tzinfo=BERLIN)
    yesterday = SHIFTS.period("yesterday", monday)
    assert yesterday.until is not None
    assert yesterday.until.timestamp() - yesterday.since.timestamp() == 23 * 3600
    assert yesterday.since == datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN)
    # the night shift of the long night is 9 hours of real time
    start, end = SHIFTS.shift(datetime(2026, 10, 25, 5, 0, tzinfo=BERLIN))
    assert end.timestamp() - start.timestamp() == 9 * 3600
    # "the last 2 hours" are 2 real hours at 03:30 that day, 3 on the clock
    two = SHIFTS.period("last 2 hours", datetime(2026, 10, 25, 3, 30, tzinfo=BERLIN))
    assert two.since.timestamp() == datetime(2026, 10, 25, 3, 30, tzinfo=BERLIN).timestamp() - 7200


def test_a_shift_starting_in_the_repeated_hour_is_one_shift() -> None:
    # New York fell back on 2026-11-01: 01:00-02:00 came twice
    york = ZoneInfo("America/New_York")
    night = Shifts([time(1, 30), time(9, 30), time(17, 30)], york)
    utc = ZoneInfo("UTC")
    for hour in (5, 6, 7):  # 01:00 EDT, 01:00 EST (the second time), 02:00 EST, in UTC
        now = datetime(2026, 11, 1, hour, 15, tzinfo=utc)
        start, end = night.shift(now)
        assert start.timestamp() <= now.timestamp() < end.timestamp(), now
    # the shift from 01:30 (the first one, EDT) to 09:30 EST is 9 hours long
    start, end = night.shift(datetime(2026, 11, 1, 12, 0, tzinfo=utc))
    assert end.timestamp() - start.timestamp() == 9 * 3600


def test_the_p_chart_limits() -> None:
    assert p_chart(50, 5, 100, 10) is None  # too little baseline
    assert p_chart(1000, 50, 10, 5) is None  # too small a subgroup
    chart = p_chart(1000, 50, 100, 5)
    assert chart is not None
    assert chart.p_bar == 0.05
    assert round(chart.ucl, 4) == round(0.05 + 3 * (0.05 * 0.95 / 100) ** 0.5, 4)
    assert chart.lcl == 0.0 and not chart.out_of_control
    worse = p_chart(1000, 50, 100, 13)
    assert worse is not None and worse.out_of_control


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "store")
    await s.open()
    yield s
    await s.close()


async def _history(store: Store, start: datetime) -> None:
    """s1: 8 inspections, 2 failed, incidents scratch twice (one confirmed, one rejected) and a
    dent; a crack people found that s1 passed. s2: nothing in the range."""
    for n in range(8):
        verdict = Verdict.FAIL if n in (1, 5) else Verdict.PASS
        await store.add_inspection(_inspection(n, verdict, start + timedelta(minutes=n)))
    await store.add_inspection(_inspection(99, Verdict.FAIL, start - timedelta(hours=1)))
    for n, cls in ((1, "scratch"), (2, "dent"), (5, "scratch")):
        await store.add_incident(_incident(n, cls, start + timedelta(minutes=n)))
    await store.set_incident_state("inc1", IncidentState.CONFIRMED)
    await store.set_incident_state("inc5", IncidentState.REJECTED)
    missed = _incident(7, "crack", start + timedelta(minutes=7))
    await store.add_incident(
        missed.model_copy(update={"state": IncidentState.CONFIRMED, "extra": {"missed": True}})
    )


async def test_the_figures_of_a_range_from_the_store(store: Store) -> None:
    start = NOW.replace(hour=6, minute=0)
    await _history(store, start)
    span = SHIFTS.period("this shift", NOW)
    report = await quality_report(store, {"s1": "Press", "s2": "Belt"}, span, now=NOW)
    assert (report.period, report.since, report.until) == ("this shift", start, NOW)
    assert not report.complete
    press, belt = report.stations
    assert (press.station_id, press.name) == ("s1", "Press")
    assert (press.inspections, press.failed) == (8, 2)  # not the one before the shift
    assert press.by_class == {"scratch": 2, "crack": 1, "dent": 1}
    assert list(press.by_class) == ["scratch", "crack", "dent"]  # a Pareto: most first
    assert press.incidents == 4
    assert (press.confirmed, press.rejected, press.missed) == (1, 1, 1)
    assert press.defect_rate_percent == 25.0
    assert press.yield_percent == 75.0
    assert press.false_reject_rate_percent == 50.0  # 1 of 2 flagged was good
    assert press.false_accept_rate_percent == 50.0  # 1 of 2 defective passed
    assert press.p_chart is None  # far too little history for limits
    # no inspections: no rates (not 0 %, which would say "perfect")
    assert belt.inspections == 0 and belt.defect_rate_percent is None
    assert belt.yield_percent is None and belt.false_reject_rate_percent is None
    assert report.total.station_id is None
    assert (report.total.inspections, report.total.incidents) == (8, 4)
    assert report.total.defect_rate_percent == 25.0
    # a range that has ended
    last = await quality_report(store, {"s1": "Press"}, SHIFTS.period("last shift", NOW), now=NOW)
    assert last.complete and last.until == start
    assert last.stations[0].inspections == 1 and last.stations[0].defect_rate_percent == 100.0
    # the JSON every consumer gets parses back to the same figures
    assert QualityReport.model_validate_json(report.model_dump_json()) == report


class _Recorder(EventSink):
    def __init__(self) -> None:
        self.quality: list[QualityReport] = []
        self.shifts: list[QualityReport] = []

    async def on_quality(self, report: QualityReport) -> None:
        self.quality.append(report)

    async def on_shift_report(self, report: QualityReport) -> None:
        self.shifts.append(report)


async def test_the_monitor_publishes_the_figures_and_reports_each_shift(store: Store) -> None:
    clock = [datetime(2026, 11, 27, 13, 59, 50, tzinfo=BERLIN)]
    shifts = Shifts([time(6), time(14), time(22)], BERLIN, clock=lambda: clock[0])
    config = QualityConfig(timezone="Europe/Berlin", refresh_s=0.2)
    sink = _Recorder()

    def monitor_() -> QualityMonitor:
        return QualityMonitor(
            store, {"s1": "Press"}, config, sink, memory=store, shifts=shifts, grace_s=3
        )

    async def poke(monitor: QualityMonitor, n: int) -> None:
        """An inspection arrives: the figures are published again, soon."""
        count = len(sink.quality)
        await monitor.on_inspection(_inspection(n, Verdict.PASS, clock[0]))
        await until(lambda: len(sink.quality) > count, "not recomputed", 10)

    monitor = monitor_()
    await _history(store, clock[0].replace(hour=13, minute=0))  # 9 inspections since 12:00
    monitor.start()
    try:
        await until(lambda: len(sink.quality) >= 1, "no figures published", 10)
        first = sink.quality[-1]
        assert first.period == "this shift" and first.stations[0].inspections == 9
        assert monitor.latest == first
        await store.add_inspection(_inspection(50, Verdict.PASS, clock[0] - timedelta(seconds=1)))
        await poke(monitor, 50)
        assert sink.quality[-1].stations[0].inspections == 10
        # 14:00:01: the morning shift has ended, but its last frames may be on their way
        clock[0] = clock[0].replace(hour=14, minute=0, second=1)
        await poke(monitor, 51)
        assert sink.shifts == [] and sink.quality[-1].stations[0].inspections == 0
        # 14:00:04: it is reported, once
        clock[0] = clock[0].replace(second=4)
        await until(lambda: len(sink.shifts) == 1, "no shift report", 10)
        report = sink.shifts[0]
        assert report.complete and report.period == "the last shift"
        assert (report.since.hour, report.until.hour) == (6, 14)
        assert report.stations[0].inspections == 10
        await poke(monitor, 52)
        assert len(sink.shifts) == 1
        with pytest.raises(StationNotFoundError):
            await monitor.report(station_id="nope")
        with pytest.raises(PeriodError):
            await monitor.report("whenever")
    finally:
        await monitor.stop()
    assert monitor._task is None

    # stopped across the end of the afternoon shift: reported when the engine is back, once
    clock[0] = datetime(2026, 11, 27, 22, 30, tzinfo=BERLIN)
    for _ in range(2):
        monitor = monitor_()
        monitor.start()
        try:
            await until(
                lambda m=monitor: m.latest is not None,
                "figures",
                10,  # type: ignore[misc]
            )
            await poke(monitor, 53)
        finally:
            await monitor.stop()
    assert [(r.since.hour, r.until.hour) for r in sink.shifts] == [(6, 14), (14, 22)]


async def test_a_failing_computation_is_logged_and_the_monitor_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sink = _Recorder()
    monitor = QualityMonitor(store, {"s1": "Press"}, QualityConfig(refresh_s=0.2), sink)
    real = monitor.report
    calls = [0]

    async def flaky(period: str | None = None, station_id: str | None = None) -> QualityReport:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug")
        return await real(period, station_id)

    monitor.report = flaky  # type: ignore[method-assign]
    monitor.start()
    try:
        await monitor.on_inspection(_inspection(1, Verdict.PASS, datetime.now(BERLIN)))
        await until(lambda: len(sink.quality) >= 1, "the monitor went on after the failure", 10)
        assert "quality figures not updated" in caplog.text and "a bug" in caplog.text
    finally:
        await monitor.stop()


def test_a_quality_configuration_is_checked_when_it_is_read() -> None:
    from pydantic import ValidationError

    assert QualityConfig(shifts=("18:00", "6:00", "06:00")).shifts == ("06:00", "18:00")
    for bad in (
        {"shifts": ("25:00",)},
        {"shifts": ("6am",)},
        {"shifts": ()},
        {"timezone": "Mars/Olympus"},
        {"period": "whenever"},
    ):
        with pytest.raises(ValidationError):
            QualityConfig.model_validate(bad)
