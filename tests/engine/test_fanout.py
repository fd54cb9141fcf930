"""The sinks' fan-out: every sink gets every event, none holds the others up, a failing one is
logged and counted, and a cancelled fan-out cancels what its sinks still wait for."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge_inspector.sinks import EventSink, SinkFanout


class Quick(EventSink):
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    async def on_connection(self, connected: bool) -> None:
        self.log.append(f"{self.name} {connected}")


class Slow(EventSink):
    def __init__(self, log: list[str], go: asyncio.Event) -> None:
        self.log, self.go = log, go
        self.cancelled = False

    async def on_connection(self, connected: bool) -> None:
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.log.append(f"slow {connected}")


class Broken(EventSink):
    async def on_connection(self, connected: bool) -> None:
        raise RuntimeError("the sink's bug")


async def test_every_sink_gets_the_event_and_a_slow_one_holds_nobody_up() -> None:
    log: list[str] = []
    go = asyncio.Event()
    fanout = SinkFanout([Slow(log, go), Quick(log, "a"), EventSink(), Quick(log, "b")])
    told = asyncio.ensure_future(fanout.on_connection(True))
    async with asyncio.timeout(5):
        while len(log) < 2:  # the quick ones have it while the slow one still waits
            await asyncio.sleep(0)
    assert log == ["a True", "b True"] and not told.done()
    go.set()
    async with asyncio.timeout(5):
        await told  # the fan-out returns once every sink has the event
    assert log == ["a True", "b True", "slow True"]


async def test_a_failing_sink_is_logged_and_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    fanout = SinkFanout([Broken(), Quick(log, "a")])
    with caplog.at_level(logging.ERROR):
        await fanout.on_connection(False)
    assert log == ["a False"]
    assert fanout.failures == 1
    assert "Broken.on_connection failed: the sink's bug" in caplog.text


async def test_a_cancelled_fan_out_cancels_its_waiting_sinks() -> None:
    log: list[str] = []
    slow = Slow(log, asyncio.Event())
    fanout = SinkFanout([slow, Quick(log, "a")])
    told = asyncio.ensure_future(fanout.on_connection(True))
    async with asyncio.timeout(5):
        while not log:
            await asyncio.sleep(0)
    told.cancel()
    with pytest.raises(asyncio.CancelledError):
        await told
    assert slow.cancelled  # its cleanup ran before the fan-out gave up
    assert log == ["a True"]


async def test_quick_sinks_are_told_without_a_turn_of_the_loop() -> None:
    """Sinks with nothing to wait for (most, on most frames) get the event at once: the
    fan-out finishes without yielding to the loop."""
    log: list[str] = []
    fanout = SinkFanout([Quick(log, "a"), Broken(), Quick(log, "b")])
    told = fanout.on_connection(True)
    with pytest.raises(StopIteration):
        told.send(None)
    assert log == ["a True", "b True"]
    assert fanout.failures == 1
