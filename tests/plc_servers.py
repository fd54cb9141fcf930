"""Real PLC stand-ins on loopback: pymodbus's Modbus TCP server and asyncua's OPC UA server, with
what the tests do as the PLC (raise a trigger, put a part id, read the verdict)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
logging.getLogger("asyncua").setLevel(logging.ERROR)

_FC_COILS, _FC_REGISTERS = 1, 3  # the function codes that pick the block to read or set
_SIMULATOR = hasattr(ModbusTcpServer, "async_setValues")  # pymodbus 3.13 and later


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Block(ModbusSequentialDataBlock):
    """A datastore block that tells its owner what a client wrote (older pymodbus)."""

    def __init__(self, size: int, value: int | bool, written: Callable[[int, list[Any]], None]):
        super().__init__(1, [value] * size)  # block address 1 is Modbus address 0
        self._written = written

    def setValues(self, address: int, values: Any) -> Any:
        result = super().setValues(address, values)
        self._written(address - 1, list(values) if isinstance(values, list) else [values])
        return result


class ModbusPlc:
    """A Modbus TCP server: coils 0-63, holding registers 0-199, any device id. On pymodbus
    3.13 and later through its simulator API; on older releases (Home Assistant 2026.2 pins
    3.11) through the datastore API they have."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: ModbusTcpServer | None = None
        self._context: Any = None  # the datastore (older pymodbus)
        # called with (function code, address, value) for each value a client writes, as the
        # request arrives: a benchmark's "the PLC has it" without scanning
        self.on_write: Callable[[int, int, int | bool], None] | None = None

    async def _written(  # noqa: PLR0917 (pymodbus calls it with these six, by position)
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        if set_values is not None and self.on_write is not None:
            for offset, value in enumerate(set_values):
                self.on_write(function_code, address + offset, value)

    def _block_written(self, function_code: int) -> Callable[[int, list[Any]], None]:
        def written(address: int, values: list[Any]) -> None:
            if self.on_write is not None:
                for offset, value in enumerate(values):
                    self.on_write(function_code, address + offset, value)

        return written

    def _make_server(self) -> ModbusTcpServer:
        address = ("127.0.0.1", self.port)
        if _SIMULATOR:
            from pymodbus.simulator import DataType, SimData, SimDevice

            device = SimDevice(
                id=0,  # answers any device id
                action=self._written,
                simdata=(
                    [SimData(0, count=64, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=200, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
                ),
            )
            return ModbusTcpServer(device, address=address)
        self._context = ModbusServerContext(
            devices=ModbusDeviceContext(
                co=_Block(64, False, self._block_written(15)),
                hr=_Block(200, 0, self._block_written(16)),
            ),
            single=True,  # any device id
        )
        return ModbusTcpServer(self._context, address=address)

    async def start(self) -> None:
        """Start; after a `stop`, the same memory (a PLC's retained data) on the same port."""
        if self._server is None:
            self._server = self._make_server()
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        server = self._server
        if server is not None and server.transport is not None:
            listener = server.transport
            await server.shutdown()
            await listener.wait_closed()

    async def _get(self, function_code: int, address: int, count: int) -> list[Any]:
        assert self._server is not None
        if _SIMULATOR:
            return list(await self._server.async_getValues(0, function_code, address, count))
        return list(self._context[0].getValues(function_code, address, count))

    async def _set(self, function_code: int, address: int, values: list[Any]) -> None:
        assert self._server is not None
        if _SIMULATOR:
            await self._server.async_setValues(0, function_code, address, values)
        else:
            self._context[0].setValues(function_code, address, values)

    async def coil(self, address: int) -> bool:
        return bool((await self._get(_FC_COILS, address, 1))[0])

    async def set_coil(self, address: int, value: bool) -> None:
        await self._set(5, address, [value])

    async def registers(self, address: int, count: int = 1) -> list[int]:
        return [int(v) for v in await self._get(_FC_REGISTERS, address, count)]

    async def set_registers(self, address: int, values: list[int]) -> None:
        await self._set(16, address, values)

    async def set_text(self, address: int, text: str, length: int) -> None:
        words = AsyncModbusTcpClient.convert_to_registers(
            text, AsyncModbusTcpClient.DATATYPE.STRING
        )
        await self.set_registers(address, (list(words) + [0] * length)[:length])


NAMESPACE = "urn:edge-inspector:test-plc"
NODES: dict[str, tuple[Any, ua.VariantType]] = {
    "Trigger": (False, ua.VariantType.Boolean),
    "PartId": ("", ua.VariantType.String),
    "LotId": ("", ua.VariantType.String),
    "Result": (0, ua.VariantType.Int16),
    "DefectCode": (0, ua.VariantType.Int16),
    "Confidence": (0.0, ua.VariantType.Float),
    "State": (0, ua.VariantType.Int16),
    "Heartbeat": (False, ua.VariantType.Boolean),
    "Sequence": (0, ua.VariantType.UInt32),
}


class OpcuaPlc:
    """An OPC UA server with a `Line1` object holding the nodes `NODES` (`ns=2;s=Line1.X`)."""

    def __init__(self, shelf: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}"
        self._shelf = shelf  # the standard address space, cached: 5 ms instead of 1.5 s a start
        self._server: Server | None = None
        self._values: dict[str, Any] = {name: value for name, (value, _) in NODES.items()}
        self.nodes: dict[str, Any] = {}
        self.on_write: Callable[[str, Any], None] | None = None  # (node name, value) a client wrote

    def _written(self, event: Any, dispatcher: Any) -> None:
        if self.on_write is None:
            return
        for item in event.request_params.NodesToWrite:
            name = str(item.NodeId.Identifier).removeprefix("Line1.")
            self.on_write(name, item.Value.Value.Value)

    async def start(self) -> None:
        """Start; after a `stop`, with the values it had (a PLC's retained data)."""
        server = Server()
        server.disable_clock(True)
        await server.init(self._shelf)
        server.set_endpoint(self.url)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        index = await server.register_namespace(NAMESPACE)
        line = await server.nodes.objects.add_object(ua.NodeId("Line1", index), "Line1")
        for name, (_, kind) in NODES.items():
            node = await line.add_variable(
                ua.NodeId(f"Line1.{name}", index), name, self._values[name], varianttype=kind
            )
            await node.set_writable()
            self.nodes[name] = node
        server.subscribe_server_callback(CallbackType.PostWrite, self._written)
        await server.start()
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for name, node in self.nodes.items():
            self._values[name] = await node.read_value()
        # the clients' sessions are closed first: stop() alone leaves them running
        for session in list(server.iserver._external_sessions.values()):
            await session.close_session()
        await server.stop()

    async def value(self, name: str) -> Any:
        return await self.nodes[name].read_value()

    async def set(self, name: str, value: Any) -> None:
        await self.nodes[name].write_value(ua.Variant(value, NODES[name][1]))
