"""The engine on a line's PLC, against real servers on loopback acting as the PLC: pymodbus's
Modbus TCP server and asyncua's OPC UA server. Trigger to verdict, the handshake (the sequence
counter last), one inspection per edge in a burst, the PLC restarted mid-burst with every
verdict accounted for, and bad configurations."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_inspector.api.metrics import Metrics
from edge_inspector.config import EngineConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from edge_inspector.errors import ConfigError
from edge_inspector.plc.config import ResultCode, StateCode
from edge_inspector.plc.link import PlcError, PlcLink
from tests.camera_server import CameraServer, camera
from tests.conftest import ALL_DEFECTS, camera_station, jpeg
from tests.plc_servers import ModbusPlc, OpcuaPlc
from tests.waiting import until, until_async

# the Modbus map of these tests
TRIGGER, PART, LOT = 0, 10, 20
RESULT, CODE, CONFIDENCE, STATE, HEARTBEAT, SEQUENCE = 100, 101, 102, 103, 104, 105
MODBUS_PLC = f"""
              plc:
                type: modbus
                host: 127.0.0.1
                port: {{port}}
                poll_ms: 2
                heartbeat_s: 0.2
                trigger: {{{{coil: {TRIGGER}}}}}
                part_id: {{{{register: {PART}, length: 8}}}}
                lot_id: {{{{register: {LOT}, length: 8}}}}
                outputs:
                  result: {{{{register: {RESULT}}}}}
                  defect_code: {{{{register: {CODE}}}}}
                  confidence: {{{{register: {CONFIDENCE}}}}}
                  state: {{{{register: {STATE}}}}}
                  heartbeat: {{{{register: {HEARTBEAT}}}}}
                  sequence: {{{{register: {SEQUENCE}}}}}
"""


@pytest.fixture
async def plc() -> AsyncIterator[ModbusPlc]:
    """A Modbus TCP server on loopback standing in for the line's PLC."""
    server = ModbusPlc()
    await server.start()
    yield server
    await server.stop()


@asynccontextmanager
async def _engine(
    make_config: Callable[..., EngineConfig], cam: CameraServer, plc: str
) -> AsyncIterator[tuple[Engine, PlcLink]]:
    config = make_config(camera_station(cam.url, extra=plc))
    async with Engine(config) as engine:
        link = engine.plc["gate"]
        await asyncio.wait_for(link.connected.wait(), 30)
        yield engine, link


def _metrics(engine: Engine) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as prometheus_client's parser reads it: (name, sorted labels) -> value."""
    text = Metrics().render(engine, None, 0)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


async def _stored(engine: Engine, count: int = 1) -> list[dict[str, object]]:
    """The newest `count` inspections once that many are recorded (else nothing)."""
    await engine.store.flush()
    rows = await engine.store.inspections(limit=count)
    return rows if len(rows) >= count else []


async def _inspections(engine: Engine) -> int:
    await engine.store.flush()
    return engine.stations["gate"].inspections


async def test_modbus_trigger_to_verdict_and_the_handshake(
    plc: ModbusPlc,
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    clean_scene: ConveyorFrame,
) -> None:
    async with camera() as cam:
        cam.snapshot_body = jpeg(defect_scenes[0].image)
        plc_yaml = MODBUS_PLC.format(port=plc.port)
        async with _engine(make_config, cam, plc_yaml) as (engine, link):
            assert engine.stations["gate"].state().plc == "connected"
            metrics = _metrics(engine)
            assert metrics[("edge_inspector_plc_up", (("station", "gate"),))] == 1
            assert ("edge_inspector_plc_pending", (("station", "gate"),)) in metrics
            for outcome in ("taken", "refused"):
                labels = (("outcome", outcome), ("station", "gate"))
                assert ("edge_inspector_plc_triggers_total", labels) in metrics
            await until_async(lambda: _is(plc, STATE, StateCode.RUNNING), "the state says running")
            # the PLC: a part arrives, its id in the registers, the trigger goes up
            await plc.set_text(PART, "P-0042", 8)
            await plc.set_text(LOT, "LOT-7", 8)
            await plc.set_coil(TRIGGER, True)
            await until_async(lambda: _is(plc, SEQUENCE, 1), "a verdict")
            result, code, confidence = await plc.registers(RESULT, 3)
            assert result == ResultCode.NG
            classes = list(engine.stations["gate"].config.defects)
            # the verdict goes out before the inspection is recorded: then it is
            stored = await until_async(lambda: _stored(engine), "the inspection recorded")
            assert stored[0]["part_id"] == "P-0042"
            assert stored[0]["lot_id"] == "LOT-7"
            assert classes[code - 1] in stored[0]["defect_classes"]
            assert 400 <= confidence <= 1000  # per mille, above the threshold
            # the PLC takes the trigger down when it has read the verdict; the next part
            # is clean
            await plc.set_coil(TRIGGER, False)
            cam.snapshot_body = jpeg(clean_scene.image)
            await until(lambda: not link.driver.trigger_high, "the engine sees it low")
            await plc.set_coil(TRIGGER, True)
            await until_async(lambda: _is(plc, SEQUENCE, 2), "the second verdict")
            assert await plc.registers(RESULT, 3) == [ResultCode.OK, 0, 0]
            # held high, it is one part: no second inspection
            beats = (await plc.registers(HEARTBEAT))[0]
            await until_async(lambda: _above(plc, HEARTBEAT, beats + 2), "the heartbeat counts on")
            assert await plc.registers(SEQUENCE) == [2]
            assert await _inspections(engine) == 2
            # disabled: the state says so, and a trigger is answered "no verdict"
            await engine.set_enabled("gate", False)
            await until_async(lambda: _is(plc, STATE, StateCode.DISABLED), "disabled")
            await plc.set_coil(TRIGGER, False)
            await until(lambda: not link.driver.trigger_high, "the engine sees it low")
            await plc.set_coil(TRIGGER, True)
            await until_async(lambda: _is(plc, SEQUENCE, 3), "an answer")
            assert (await plc.registers(RESULT))[0] == 0
        # a clean stop says so
        assert await plc.registers(STATE) == [StateCode.STOPPED]


async def test_the_ids_are_read_while_the_camera_captures_and_a_failed_read_loses_no_part(
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    async with camera() as cam:
        cam.snapshot_body = jpeg(defect_scenes[0].image)
        async with Engine(make_config(camera_station(cam.url))) as engine:
            station = engine.stations["gate"]
            # the ids arrive while the frame is being taken: they join it
            reading: asyncio.Future[tuple[str | None, str | None]] = loop.create_future()
            cam.hold = asyncio.Event()
            inspection = asyncio.create_task(station.inspect_now(identify=reading))
            await until(lambda: cam.requests >= 1, "the camera asked before the ids came")
            reading.set_result(("P-7", "LOT-1"))
            cam.hold.set()
            result = await inspection
            assert (result.part_id, result.lot_id) == ("P-7", "LOT-1")
            # the read fails (the PLC went away): the part is inspected all the same
            failed: asyncio.Future[tuple[str | None, str | None]] = loop.create_future()
            failed.set_exception(PlcError("holding registers 10-17: the PLC answered 'busy'"))
            result = await station.inspect_now(identify=failed)
            assert result.part_id is None
            assert result.verdict.value == "fail"
            assert "ids were not read" in caplog.text
            assert "'busy'" in caplog.text


async def _is(plc: ModbusPlc, register: int, value: int) -> bool:
    return (await plc.registers(register))[0] == value


async def _above(plc: ModbusPlc, register: int, value: int) -> bool:
    return (await plc.registers(register))[0] > value


async def test_a_burst_of_edges_with_the_plc_restarted_midway_loses_no_verdict(
    plc: ModbusPlc, make_config: Callable[..., EngineConfig], defect_scenes: list[ConveyorFrame]
) -> None:
    async with camera() as cam:
        cam.snapshot_body = jpeg(defect_scenes[0].image)
        async with _engine(make_config, cam, MODBUS_PLC.format(port=plc.port)) as (
            engine,
            link,
        ):
            pulses = 0

            async def pulse() -> None:
                nonlocal pulses
                pulses += 1
                await plc.set_text(PART, f"P-{pulses}", 8)
                await plc.set_coil(TRIGGER, True)
                await until(lambda: link.edges >= pulses, f"edge {pulses} seen", 10)
                await plc.set_coil(TRIGGER, False)  # low until the engine has seen it
                await until(lambda: not link.driver.trigger_high, "the trigger low", 10)

            cam.hold = asyncio.Event()  # the camera is slow: the edges wait their turn
            for _ in range(10):
                await pulse()
            await plc.stop()  # the PLC restarts while the verdicts are still being made
            await until(lambda: not link.connected.is_set(), "the link sees it go")
            assert engine.stations["gate"].state().plc == "unavailable"
            assert _metrics(engine)[("edge_inspector_plc_up", (("station", "gate"),))] == 0
            cam.hold.set()
            # the verdicts made meanwhile wait, in order
            await until(lambda: link.pending >= 10, "ten verdicts waiting")
            await plc.start()
            await asyncio.wait_for(link.connected.wait(), 30)
            for _ in range(10):
                await pulse()
            await until_async(lambda: _is(plc, SEQUENCE, 20), "every verdict", 60)
            assert link.edges == 20 and link.refused_edges == 0
            assert await _inspections(engine) == 20  # one inspection per edge, never two
            stored = await until_async(lambda: _stored(engine, 20), "all recorded")
            assert sorted(int(r["part_id"][2:]) for r in stored) == list(range(1, 21))


async def test_opcua_trigger_to_verdict_and_a_restart(
    make_config: Callable[..., EngineConfig],
    defect_scenes: list[ConveyorFrame],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    plc = OpcuaPlc(tmp_path_factory.getbasetemp() / "opcua-address-space")
    await plc.start()
    try:
        async with camera() as cam:
            cam.snapshot_body = jpeg(defect_scenes[0].image)
            opcua = """
              plc:
                type: opcua
                url: URL
                namespace: "urn:edge-inspector:test-plc"
                heartbeat_s: 0.2
                trigger: s=Line1.Trigger
                part_id: s=Line1.PartId
                lot_id: s=Line1.LotId
                outputs:
                  result: s=Line1.Result
                  defect_code: s=Line1.DefectCode
                  confidence: s=Line1.Confidence
                  state: s=Line1.State
                  heartbeat: s=Line1.Heartbeat
                  sequence: s=Line1.Sequence
            """.replace("URL", plc.url)
            async with _engine(make_config, cam, opcua) as (engine, link):
                await until_async(
                    lambda: _node_is(plc, "State", StateCode.RUNNING), "the state says running"
                )
                await plc.set("PartId", "P-77")
                await plc.set("Trigger", True)
                await until_async(lambda: _node_is(plc, "Sequence", 1), "a verdict")
                assert await plc.value("Result") == ResultCode.NG
                assert await plc.value("DefectCode") >= 1
                assert await plc.value("Confidence") >= 400
                stored = await until_async(lambda: _stored(engine), "the inspection recorded")
                assert stored[0]["part_id"] == "P-77"
                await plc.set("Trigger", False)
                await until(lambda: not link.driver.trigger_high, "the engine sees it low")
                # the PLC restarts; the link comes back by itself and goes on counting
                await plc.stop()
                await until(lambda: not link.connected.is_set(), "the link sees it go")
                await plc.start()
                await asyncio.wait_for(link.connected.wait(), 30)
                await plc.set("PartId", "P-78")
                await plc.set("Trigger", True)
                await until_async(lambda: _node_is(plc, "Sequence", 2), "the next verdict")
                assert link.edges == 2
                assert await _inspections(engine) == 2
    finally:
        await plc.stop()


async def _node_is(plc: OpcuaPlc, name: str, value: object) -> bool:
    return bool(await plc.value(name) == value)


@pytest.mark.parametrize(
    ("plc", "message"),
    [
        (
            "plc: {type: modbus, host: h, trigger: {coil: 1}}",
            "plc.trigger needs mode: triggered",
        ),
        (
            "plc: {type: modbus, host: h, outputs: {result: {register: 5}, "
            "sequence: {register: 5}}}",
            "outputs.sequence and outputs.result both use register 5",
        ),
        (
            "plc: {type: modbus, host: h, trigger: {coil: 1, register: 2}}",
            "either coil or register",
        ),
        ("plc: {type: modbus, host: h, codes: {rust: 1}}", "not defects: rust"),
        ("plc: {type: opcua, url: 'http://x'}", "plc.opcua.url"),
        ("plc: {type: modbus, host: h, outputs: {result: {register: 70000}}}", "65535"),
    ],
)
def test_bad_plc_configurations_name_the_key(
    write_config: Callable[[str], Path], plc: str, message: str
) -> None:
    from edge_inspector.config import load_config

    path = write_config(f"""
stations:
  - id: belt
    name: Belt
    source: {{type: push}}
    model: {{path: m.pt}}
    defects: {{dent: 0.5}}
    {plc}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value) + " ".join(caught.value.problems)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("outputs", "requests"),
    [
        # the map of these tests: result..confidence in one request, then the sequence alone
        (
            {"result": 100, "defect_code": 101, "confidence": 102, "sequence": 105},
            [
                ("register", 100, ["result", "defect_code", "confidence"]),
                ("register", 105, ["sequence"]),
            ],
        ),
        # the sequence counter next to the verdict: the whole verdict is one request
        (
            {"sequence": 99, "result": 100, "defect_code": 101, "confidence": 102},
            [("register", 99, ["sequence", "result", "defect_code", "confidence"])],
        ),
        # a gap, and a coil: each run one request, the sequence counter's last
        (
            {"result": {"coil": 4}, "defect_code": 20, "confidence": 23, "sequence": 21},
            [
                ("coil", 4, ["result"]),
                ("register", 23, ["confidence"]),
                ("register", 20, ["defect_code", "sequence"]),
            ],
        ),
    ],
)
def test_modbus_outputs_next_to_each_other_are_written_in_one_request(
    outputs: dict[str, int | dict[str, int]], requests: list[tuple[str, int, list[str]]]
) -> None:
    from edge_inspector.plc.config import ModbusPlcConfig
    from edge_inspector.plc.modbus import ModbusDriver

    config = ModbusPlcConfig.model_validate(
        {
            "type": "modbus",
            "host": "plc",
            "outputs": {
                name: where if isinstance(where, dict) else {"register": where}
                for name, where in outputs.items()
            },
        }
    )
    verdict = {"result": 2, "defect_code": 3, "confidence": 870, "sequence": 7}
    runs = ModbusDriver(config)._runs(verdict)
    assert [(kind, start, [c[0] for c in cells]) for kind, start, cells in runs] == requests
    assert [v for _, _, cells in runs for name, _, v in cells if name == "sequence"] == [7]


async def test_check_prints_the_map_and_names_an_unreachable_plc(
    plc: ModbusPlc, write_config: Callable[[str], Path], demo_model: Path
) -> None:
    plc_yaml = textwrap.indent(textwrap.dedent(MODBUS_PLC.format(port=plc.port)).strip(), "    ")
    body = (
        "stations:\n  - id: gate\n    name: Gate\n    mode: triggered\n"
        f"    source: {{type: push}}\n    model: {{path: {demo_model}}}\n"
        f"    defects: {ALL_DEFECTS}\n{plc_yaml}\n"
    )
    path = write_config(body)
    command = [
        sys.executable,
        "-m",
        "edge_inspector.cli",
        "check",
        "--no-load",
        "-c",
        str(path),
    ]
    ok = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"PLC: Modbus TCP 127.0.0.1:{plc.port} device 1" in ok.stdout
    assert "trigger      coil 0" in ok.stdout
    assert "sequence     holding register 105" in ok.stdout
    assert "defect codes: scratch=1, dent=2, crack=3, spot=4" in ok.stdout
    # an address the PLC does not have, then no PLC at all
    path.write_text(body.replace("register: 105", "register: 900"))
    bad = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "outputs.sequence (holding register 900)" in bad.stderr
    assert "illegal data address" in bad.stderr
    await plc.stop()
    gone = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert gone.returncode == 1
    where = f"Modbus TCP 127.0.0.1:{plc.port} device 1"
    assert f"stations[gate].plc: {where}: cannot connect" in gone.stderr


async def test_vlm_actions_write_the_configured_value_to_the_plc(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from edge_inspector.config import ActionConfig
    from edge_inspector.plc.actions import PlcActionPort
    from edge_inspector.tools.actions import ActionContext, ActionError

    def action(target: dict[str, object]) -> ActionConfig:
        return ActionConfig.model_validate(
            {"name": "stop_line", "description": "Stop the conveyor", "target": target}
        )

    context = ActionContext(station_id="gate", incident_id="i1", defect_class="dent")
    port = PlcActionPort()
    modbus = ModbusPlc()
    opcua = OpcuaPlc(tmp_path_factory.getbasetemp() / "opcua-address-space")
    await modbus.start()
    await opcua.start()
    try:
        stop = {"type": "modbus", "host": "127.0.0.1", "port": modbus.port, "coil": 7}
        done = await port.execute(action({**stop, "value": True}), {}, context)
        assert "coil 7" in done and await modbus.coil(7) is True
        await port.execute(action({**stop, "coil": None, "register": 50, "value": 3}), {}, context)
        assert await modbus.registers(50) == [3]
        node = {"type": "opcua", "url": opcua.url, "namespace": "urn:edge-inspector:test-plc"}
        await port.execute(action({**node, "node": "s=Line1.State", "value": 9}), {}, context)
        assert await opcua.value("State") == 9  # written as the node's Int16
        with pytest.raises(ActionError, match=r"s=Line1\.Nope"):
            await port.execute(action({**node, "node": "s=Line1.Nope", "value": 1}), {}, context)
        await modbus.stop()
        with pytest.raises(ActionError, match="cannot connect"):
            await port.execute(action({**stop, "value": True}), {}, context)
    finally:
        await modbus.stop()
        await opcua.stop()
