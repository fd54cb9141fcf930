"""The engine as an OPC UA server for SCADA, read by a real asyncua client as a SCADA would:
browse the stations, read their state, KPIs and last verdict, follow a verdict and a disabled
station, be refused a write, and be told of a verdict by subscription."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from edge_inspector.config import EngineConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.plc.config import ResultCode, StateCode
from edge_inspector.plc.scada import OpcuaScadaServer
from tests.camera_server import CameraServer, camera
from tests.conftest import ALL_DEFECTS, camera_station, jpeg
from tests.plc_servers import free_port
from tests.waiting import until, until_async

NAMESPACE = "urn:edge-inspector"

VARIABLES = {
    "Name": ua.VariantType.String,
    "Enabled": ua.VariantType.Boolean,
    "Available": ua.VariantType.Boolean,
    "State": ua.VariantType.Int16,
    "Error": ua.VariantType.String,
    "Inspections": ua.VariantType.UInt32,
    "Defects": ua.VariantType.UInt32,
    "DefectRate": ua.VariantType.Double,
    "LastVerdict": ua.VariantType.Int16,
    "LastDefectClass": ua.VariantType.String,
    "LastConfidence": ua.VariantType.Double,
    "LastPartId": ua.VariantType.String,
    "Sequence": ua.VariantType.UInt32,
    "LastInspection": ua.VariantType.DateTime,
}


@pytest.fixture
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The address-space cache, shared by the session's servers: only the first builds it."""
    return tmp_path_factory.getbasetemp() / "opcua-shelf"


@asynccontextmanager
async def _scada(
    make_config: Callable[..., EngineConfig], cam: CameraServer, shelf: Path
) -> AsyncIterator[tuple[Engine, OpcuaScadaServer]]:
    """An engine (a triggered station on a camera, a push station) with the SCADA server."""
    config = make_config(
        camera_station(cam.url),
        f"""
        - id: pushed
          name: Pushed
          mode: triggered
          source: {{type: push}}
          model: {{path: MODEL, imgsz: 320}}
          defects: {ALL_DEFECTS}
    """,
    )
    engine = Engine(config)
    await engine.start()
    server = OpcuaScadaServer(engine, f"opc.tcp://127.0.0.1:{free_port()}", cache_dir=shelf)
    engine.sinks.add(server)
    try:
        await server.start()
        yield engine, server
    finally:
        await server.stop()
        engine.sinks.remove(server)
        await engine.stop()


@asynccontextmanager
async def _client(url: str) -> AsyncIterator[Client]:
    """A SCADA's connection: anonymous, no security."""
    client = Client(url, timeout=10)
    await client.connect()
    try:
        yield client
    finally:
        with contextlib.suppress(OSError, ConnectionError, TimeoutError, UaError):
            await client.disconnect()


async def _station(client: Client, station_id: str) -> dict[str, Node]:
    """The station's variables, by browsing from Objects as a SCADA's tag browser does."""
    index = await client.get_namespace_index(NAMESPACE)
    root = await client.nodes.objects.get_child(f"{index}:EdgeInspector")
    station = await root.get_child(f"{index}:{station_id}")
    return {(await n.read_browse_name()).Name: n for n in await station.get_children()}


async def _values(nodes: dict[str, Node]) -> dict[str, Any]:
    return {name: await node.read_value() for name, node in nodes.items()}


def _tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()}


async def test_a_scada_reads_the_stations_and_follows_a_verdict(
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    shelf: Path,
) -> None:
    before = _tasks()
    async with camera() as cam:
        cam.snapshot_body = jpeg(defect_scenes[0].image)
        async with _scada(make_config, cam, shelf) as (engine, server):
            assert server.url.startswith("opc.tcp://127.0.0.1:")
            async with _client(server.url) as client:
                index = await client.get_namespace_index(NAMESPACE)
                assert index == server.namespace_index
                root = await client.nodes.objects.get_child(f"{index}:EdgeInspector")
                assert root.nodeid == ua.NodeId("EdgeInspector", index)
                names = {(await n.read_browse_name()).Name for n in await root.get_children()}
                assert names == {"gate", "pushed"}
                gate = await _station(client, "gate")
                assert set(gate) == set(VARIABLES)
                for name, kind in VARIABLES.items():
                    node = gate[name]
                    assert node.nodeid == ua.NodeId(f"gate.{name}", index)
                    assert await node.read_data_type_as_variant_type() == kind, name
                    assert (await node.read_description()).Text, name
                initial = await _values(gate)
                assert initial["LastInspection"].year == 1601  # OPC UA's null date
                assert initial | {"LastInspection": None} == {
                    "Name": "Gate",
                    "Enabled": True,
                    "Available": True,
                    "State": StateCode.RUNNING,
                    "Error": "",
                    "Inspections": 0,
                    "Defects": 0,
                    "DefectRate": 0.0,
                    "LastVerdict": 0,
                    "LastDefectClass": "",
                    "LastConfidence": 0.0,
                    "LastPartId": "",
                    "Sequence": 0,
                    "LastInspection": None,
                }
                pushed = await _station(client, "pushed")
                assert await pushed["Name"].read_value() == "Pushed"

                # a verdict: the SCADA sees it, the sequence counter last
                result = await engine.inspect_now("gate", part_id="P-1")
                assert result.verdict == "fail"

                async def verdict_seen() -> bool:
                    return bool(await gate["Sequence"].read_value() == 1)

                await until_async(verdict_seen, "the verdict over OPC UA")
                seen = await _values(gate)
                top = max(result.defects, key=lambda d: d.confidence)
                assert seen["LastVerdict"] == ResultCode.NG
                assert seen["LastPartId"] == "P-1"
                assert seen["LastDefectClass"] == top.class_name
                assert seen["LastConfidence"] == pytest.approx(top.confidence)
                assert (seen["Inspections"], seen["Defects"]) == (1, 1)

                async def rate_published() -> bool:  # the engine's figure, once recomputed
                    return bool(await gate["DefectRate"].read_value() == 100.0)

                await until_async(rate_published, "the defect rate over OPC UA")
                when = seen["LastInspection"].replace(tzinfo=UTC)
                assert abs((when - result.timestamp).total_seconds()) < 0.001
                assert await pushed["Sequence"].read_value() == 0  # another station's verdict

                # paused: the state says so
                await engine.set_enabled("gate", False)

                async def disabled() -> bool:
                    return bool(await gate["State"].read_value() == StateCode.DISABLED)

                await until_async(disabled, "the state says disabled")
                assert await gate["Enabled"].read_value() is False

                # read-only: a SCADA's write is refused, and nothing changes
                for name, value in (("Sequence", 7), ("State", StateCode.RUNNING)):
                    with pytest.raises(UaStatusCodeError) as refused:
                        await gate[name].write_value(ua.Variant(value, VARIABLES[name]))
                    assert refused.value.code in (
                        ua.StatusCodes.BadUserAccessDenied,
                        ua.StatusCodes.BadNotWritable,
                    )
                access = await gate["Sequence"].read_attribute(ua.AttributeIds.UserAccessLevel)
                assert access.Value is not None
                assert not access.Value.Value & ua.AccessLevel.CurrentWrite.mask
                assert await gate["Sequence"].read_value() == 1
                assert await gate["State"].read_value() == StateCode.DISABLED
    # stopped: no server, no task of it or of the client left
    with pytest.raises((OSError, ConnectionError, TimeoutError, UaError)):
        await Client(server.url, timeout=2).connect()
    await until(lambda: not (_tasks() - before), "every task ended", 10)


class _Changes:
    """A SCADA's subscription handler: every notified value, by variable."""

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}
        self._names: dict[ua.NodeId, str] = {}

    def watch(self, name: str, node: Node) -> None:
        self._names[node.nodeid] = name

    def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
        self.values.setdefault(self._names[node.nodeid], []).append(value)

    def last(self, name: str) -> Any:
        return self.values.get(name, [None])[-1]


async def test_a_subscribed_scada_is_told_each_verdict_and_the_stop(
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    clean_scene: ConveyorFrame,
    shelf: Path,
) -> None:
    before = _tasks()
    async with camera() as cam:
        cam.snapshot_body = jpeg(defect_scenes[0].image)
        async with (
            _scada(make_config, cam, shelf) as (engine, server),
            _client(server.url) as client,
        ):
            gate = await _station(client, "gate")
            changes = _Changes()
            subscription = await client.create_subscription(20, changes)
            for name in ("Sequence", "LastVerdict", "State"):
                changes.watch(name, gate[name])
            await subscription.subscribe_data_change(
                [gate["Sequence"], gate["LastVerdict"], gate["State"]]
            )
            # the first notification is the current value
            await until(lambda: changes.last("Sequence") == 0, "the current sequence")
            assert changes.last("State") == StateCode.RUNNING

            await engine.inspect_now("gate", part_id="P-1")
            await until(lambda: changes.last("Sequence") == 1, "the first verdict notified")
            assert changes.last("LastVerdict") == ResultCode.NG
            cam.snapshot_body = jpeg(clean_scene.image)
            await engine.inspect_now("gate", part_id="P-2")
            await until(lambda: changes.last("Sequence") == 2, "the second verdict notified")
            assert changes.last("LastVerdict") == ResultCode.OK
            assert changes.values["Sequence"] == [0, 1, 2]
            assert await gate["LastPartId"].read_value() == "P-2"

            # stopped: the subscriber is sent STOPPED before its session ends
            await gate["Sequence"].read_value()  # its next publish request is at the server
            await server.stop()
            await until(lambda: changes.last("State") == StateCode.STOPPED, "STOPPED notified", 10)
    await until(lambda: not (_tasks() - before), "every task ended", 10)


async def test_a_port_in_use_is_an_error_that_names_the_endpoint(
    make_config: Callable[..., EngineConfig], shelf: Path
) -> None:
    from edge_inspector.errors import EdgeInspectorError

    async with camera() as cam, _scada(make_config, cam, shelf) as (engine, server):
        other = OpcuaScadaServer(engine, server.url, cache_dir=shelf)
        with pytest.raises(EdgeInspectorError, match=server.url.replace(".", r"\.")):
            await other.start()
        assert not other.running
        await other.stop()  # nothing to stop: no error
        assert server.running


async def test_a_bad_cache_port_zero_and_a_failed_write_are_survived(
    make_config: Callable[..., EngineConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_inspector.plc.scada import _shelf_name

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / _shelf_name()).write_bytes(b"cut short")  # a shelf whose writer was killed
    async with camera() as cam:
        config = make_config(camera_station(cam.url))
        async with Engine(config) as engine:
            server = OpcuaScadaServer(engine, "opc.tcp://127.0.0.1:0", cache_dir=cache)
            assert server.url == "opc.tcp://127.0.0.1:0"
            await server.start()  # not a sink: the test hands it the events
            try:
                assert int(server.url.rsplit(":", 1)[1]) > 0
                assert (cache / _shelf_name()).stat().st_size > 1000  # rebuilt
                assert [p.name for p in cache.iterdir()] == [_shelf_name()]
                async with _client(server.url) as client:
                    gate = await _station(client, "gate")
                    result = await engine.inspect_now("gate", part_id="P-1")
                    # one variable cannot be written: logged, the others are, nothing raised
                    write_value = Node.write_value

                    async def failing(node: Node, value: Any, *args: Any) -> None:
                        if node.nodeid.Identifier == "gate.LastPartId":
                            raise UaStatusCodeError(ua.StatusCodes.BadInternalError)
                        await write_value(node, value, *args)

                    monkeypatch.setattr(Node, "write_value", failing)
                    await server.on_inspection(result)
                    assert await gate["Sequence"].read_value() == 1
                    assert await gate["LastPartId"].read_value() == ""
                    monkeypatch.undo()
                    await server.on_inspection(result.model_copy(update={"part_id": "P-2"}))
                    assert await gate["Sequence"].read_value() == 2
                    assert await gate["LastPartId"].read_value() == "P-2"
                    # a station it does not know is ignored
                    state = engine.stations["gate"].state()
                    await server.on_station_state(state.model_copy(update={"station_id": "x"}))
                    await server.on_inspection(result.model_copy(update={"station_id": "x"}))
            finally:
                await server.stop()
            assert server.url == "opc.tcp://127.0.0.1:0"


async def test_edge_inspector_run_serves_scada_when_configured(tmp_path: Path) -> None:
    from tests.service import running_service

    port = free_port()
    extra = f"opcua_server: {{endpoint: 'opc.tcp://127.0.0.1:{port}', namespace: 'urn:plant-a'}}"
    with running_service(tmp_path, fps=4, extra=extra):
        async with _client(f"opc.tcp://127.0.0.1:{port}") as client:
            index = await client.get_namespace_index("urn:plant-a")
            inspections = client.get_node(f"ns={index};s=line_a.Inspections")
            await until_async(
                lambda: _positive(inspections), "the camera station's inspections counted"
            )
            name = await client.get_node(f"ns={index};s=dock.Name").read_value()
            assert name == "Dock"


async def _positive(node: Node) -> bool:
    return bool(await node.read_value() > 0)
