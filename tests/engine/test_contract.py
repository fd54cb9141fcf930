"""One contract, two engines: the engine in this process (`Engine`) and the service's client
(`RemoteEngine`, over the HTTP API of that same engine) answer the same calls with the same
values, and fail with the same typed errors. (That both keep `InspectionEngine`'s signatures
is checked by mypy, in engine.py and api/client.py.)"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from edge_inspector.api.client import RemoteEngine
from edge_inspector.api.server import ApiServer
from edge_inspector.config import EngineConfig, HttpConfig
from edge_inspector.contract import InspectionEngine
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.errors import (
    EngineAuthError,
    EngineUnreachableError,
    ImageNotFoundError,
    IncidentNotFoundError,
    InputError,
    ManualsNotIndexedError,
    RefusedError,
    StationNotFoundError,
)
from edge_inspector.events import IncidentState, Verdict
from tests.conftest import ALL_DEFECTS, jpeg
from tests.service import TOKEN, free_port
from tests.waiting import until, until_async

BELT = f"""
- id: belt
  name: Belt
  source: {{type: push}}
  model: {{path: MODEL, imgsz: 320}}
  defects: {ALL_DEFECTS}
"""


def test_both_engines_have_every_method_of_the_contract_with_its_parameters() -> None:
    properties = {"connected", "token_refused"}
    members = [
        name
        for name in dir(InspectionEngine)
        if not name.startswith("_") and name not in properties
    ]
    assert "incident_image" in members and "quality" in members
    for name in members:
        wanted = inspect.signature(getattr(InspectionEngine, name))
        for engine in (Engine, RemoteEngine):
            method = getattr(engine, name)
            assert inspect.signature(method).parameters.keys() == wanted.parameters.keys(), (
                engine,
                name,
            )
            assert inspect.iscoroutinefunction(method) == inspect.iscoroutinefunction(
                getattr(InspectionEngine, name)
            ), (engine, name)


@asynccontextmanager
async def _engines(config: EngineConfig) -> AsyncIterator[tuple[Engine, RemoteEngine, str]]:
    """The engine in this process, and a client of its HTTP API."""
    async with Engine(config) as local:
        server = ApiServer(local, HttpConfig(port=free_port(), token=TOKEN))
        local.add_sink(server)  # its events go to the websocket's clients
        url = await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                remote = RemoteEngine(url, TOKEN, session=session)
                await remote.start()
                try:
                    yield local, remote, url
                finally:
                    await remote.stop()
        finally:
            await server.stop()


async def test_the_engine_and_its_client_answer_alike(
    make_config: Callable[..., EngineConfig], defect_scenes: list[ConveyorFrame]
) -> None:
    async with _engines(make_config(BELT)) as (local, remote, _):
        engines: tuple[InspectionEngine, ...] = (local, remote)
        assert local.connected
        await until(lambda: remote.connected, "the client follows the engine's events")
        assert [s.station_id for s in remote.states()] == [s.station_id for s in local.states()]
        assert local.is_running("belt") and remote.is_running("belt")
        assert not local.is_running("gate") and not remote.is_running("gate")
        # a picture inspected through each: both are in the one history
        for engine in engines:
            result = await engine.inspect_image("belt", jpeg(defect_scenes[0].image), part_id="P1")
            assert result.verdict is Verdict.FAIL and result.part_id == "P1"

        async def recorded() -> bool:
            return (await local.quality(station_id="belt")).stations[0].inspections == 2

        await until_async(recorded, "both inspections recorded")
        since = datetime.now(UTC) - timedelta(hours=1)
        for period in (None, "today", "last hour", "this shift"):
            mine = await local.quality(period=period, station_id="belt")
            theirs = await remote.quality(period=period, station_id="belt")
            assert (mine.period, mine.stations) == (theirs.period, theirs.stations)
            if period != "last hour":  # a range that rolls with the clock
                assert mine.since == theirs.since
        [belt] = (await remote.quality(period="today")).stations
        assert (belt.inspections, belt.failed, belt.defect_rate_percent) == (2, 2, 100.0)
        # the published figures reach the client as they are computed
        await until(
            lambda: (
                (latest := local.latest_quality()) is not None
                and remote.latest_quality() == latest
                and latest.total.inspections == 2
            ),
            "the published figures over the websocket",
        )
        assert not local.token_refused and not remote.token_refused
        assert await local.counts_by_class(since=since) == await remote.counts_by_class(since=since)
        series = {"station_id": "belt", "since": since, "until": datetime.now(UTC), "bucket": 1}
        assert await local.rate_series(**series) == await remote.rate_series(**series)  # type: ignore[arg-type]
        incidents = await local.incidents(station_id="belt")
        assert incidents and [i.incident_id for i in incidents] == [
            i.incident_id for i in await remote.incidents(station_id="belt")
        ]
        first = incidents[0]
        assert await remote.incident(first.incident_id) == first
        assert await remote.last_incident("belt") == await local.last_incident("belt")
        picture = await local.incident_image(first.incident_id)
        assert (
            picture.startswith(b"\xff\xd8")
            and await remote.incident_image(first.incident_id) == picture
        )
        # commands answer with the station's new state
        for n, engine in enumerate(engines):
            state = await engine.set_threshold("belt", "dent", 0.6 + n / 10)
            assert state.thresholds["dent"] == pytest.approx(0.6 + n / 10)
            assert (await engine.set_enabled("belt", False)).enabled is False
            assert (await engine.set_enabled("belt", True)).enabled is True
        updated = await remote.set_verdict(first.incident_id, IncidentState.REJECTED, by="qa")
        assert updated.state is IncidentState.REJECTED
        assert (await local.incident(first.incident_id)) == updated
        # and the same typed errors
        for engine in engines:
            assert await engine.incident("nope") is None
            with pytest.raises(StationNotFoundError):
                await engine.set_enabled("nope", True)
            with pytest.raises(IncidentNotFoundError):
                await engine.set_verdict("nope", IncidentState.CONFIRMED, by="qa")
            with pytest.raises(IncidentNotFoundError):
                await engine.incident_image("nope")
            missed = await engine.report_missed_defect("belt", "dent", by="qa", part_id="P9")
            assert missed.extra["missed"] and (await engine.incident(missed.incident_id)) == missed
            with pytest.raises(ImageNotFoundError):  # a person's report has no picture
                await engine.incident_image(missed.incident_id)
            with pytest.raises(RefusedError):  # a push station has no camera of its own
                await engine.inspect_now("belt")
            with pytest.raises(RefusedError):  # no VLM here
                await engine.resolve_action(first.incident_id, "r1", approve=True, by="qa")
            with pytest.raises(ManualsNotIndexedError):
                await engine.search_manuals("belt tension")
            with pytest.raises(InputError):
                await engine.report_missed_defect("belt", "rust", by="qa")
            with pytest.raises(InputError, match="do not understand"):
                await engine.quality(period="whenever")
            with pytest.raises(StationNotFoundError):
                await engine.quality(station_id="nope")
            assert await engine.vlm_status() is None


async def test_a_client_is_told_a_refused_token_from_an_engine_that_is_not_there(
    make_config: Callable[..., EngineConfig],
) -> None:
    async with _engines(make_config(BELT)) as (_, _, url), aiohttp.ClientSession() as session:
        with pytest.raises(EngineAuthError):
            await RemoteEngine(url, "a-token-it-does-not-know", session=session).start()
        with pytest.raises(EngineUnreachableError):
            await RemoteEngine(f"http://127.0.0.1:{free_port()}", TOKEN, session=session).start()
