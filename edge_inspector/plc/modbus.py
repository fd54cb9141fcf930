"""The PLC link over Modbus TCP (pymodbus): the trigger polled, neighbouring outputs written
in one request."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusTcpClient

from .config import OUTPUTS, ModbusPlcConfig, ModbusPoint, ModbusText
from .driver import EdgeCallback, Ids, PlcError, Values

__all__ = ["ModbusDriver"]

# pymodbus logs every failed request with a dump of the last frames; the link says what matters
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

_EXCEPTION_CODES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}


def _bit(name: str, value: int) -> bool:
    """An output on a coil: set for NG (result), toggling (heartbeat), non-zero (the others)."""
    if name == "result":
        return value == 2
    return bool(value % 2) if name == "heartbeat" else bool(value)


class ModbusDriver:
    def __init__(self, config: ModbusPlcConfig) -> None:
        self.config = config
        self._client: AsyncModbusTcpClient | None = None
        self.trigger_high = False

    def describe(self) -> str:
        return self.config.describe()

    # -- plumbing ----------------------------------------------------------------------------

    def _connected(self) -> AsyncModbusTcpClient:
        if self._client is None or not self._client.connected:
            raise PlcError(f"{self.describe()}: not connected")
        return self._client

    async def _call(self, what: str, request: Any) -> Any:
        try:
            response = await request
        except ModbusException as exc:
            raise PlcError(f"{self.describe()}: {what}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            reason = _EXCEPTION_CODES.get(code, f"exception {code}") if code else str(response)
            raise PlcError(f"{self.describe()}: {what}: the PLC answered {reason!r}")
        return response

    async def _read_point(self, name: str, point: ModbusPoint) -> int:
        client, unit = self._connected(), self.config.device_id
        if point.coil is not None:
            response = await self._call(
                f"{name} ({point.describe()})",
                client.read_coils(point.coil, count=1, device_id=unit),
            )
            return int(bool(response.bits[0]))
        assert point.holding is not None
        response = await self._call(
            f"{name} ({point.describe()})",
            client.read_holding_registers(point.holding, count=1, device_id=unit),
        )
        return int(response.registers[0])

    async def _read_text(self, name: str, text: ModbusText | None) -> str | None:
        if text is None:
            return None
        response = await self._call(
            f"{name} ({text.describe()})",
            self._connected().read_holding_registers(
                text.start, count=text.length, device_id=self.config.device_id
            ),
        )
        value = AsyncModbusTcpClient.convert_from_registers(
            response.registers, AsyncModbusTcpClient.DATATYPE.STRING
        )
        cleaned = str(value).strip("\x00 ").strip()
        return cleaned or None

    async def _read_ids(self) -> Ids:
        return (
            await self._read_text("part_id", self.config.part_id),
            await self._read_text("lot_id", self.config.lot_id),
        )

    # -- the driver --------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        self._client = AsyncModbusTcpClient(
            self.config.host,
            port=self.config.port,
            timeout=self.config.timeout_s,
            retries=0,
            reconnect_delay=0,  # the link reconnects, with its own back-off
        )
        if not await self._client.connect():
            raise PlcError(f"{self.describe()}: cannot connect")
        # every configured point is read once, so a wrong map fails here, by name
        if self.config.trigger is not None:
            await self._read_point("trigger", self.config.trigger)
        await self._read_text("part_id", self.config.part_id)
        await self._read_text("lot_id", self.config.lot_id)
        for name in OUTPUTS:
            point = getattr(self.config.outputs, name)
            if point is not None:
                await self._read_point(f"outputs.{name}", point)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def watch_trigger(self, edge: EdgeCallback) -> None:
        trigger = self.config.trigger
        if trigger is None:
            await asyncio.Event().wait()  # outputs only: nothing to watch, forever
            return
        period = self.config.poll_ms / 1000
        was_high = False  # a trigger high at (re)connection is an edge: a part is waiting
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            high = await self._read_point("trigger", trigger) != 0
            if high and not was_high:
                ids = asyncio.ensure_future(self._read_ids())
                edge(ids)
                await asyncio.wait([ids])  # one request at a time on the connection
                ids.result()  # a failed read ends the watch: the connection is in doubt
            was_high = self.trigger_high = high
            await asyncio.sleep(max(0.0, period - (loop.time() - started)))

    async def write(self, values: Values) -> None:
        client, unit = self._connected(), self.config.device_id
        for kind, start, cells in self._runs(values):
            what = ", ".join(f"outputs.{name} ({point.describe()})" for name, point, _ in cells)
            if kind == "coil":
                bits = [_bit(name, value) for name, _, value in cells]
                request = (
                    client.write_coil(start, bits[0], device_id=unit)
                    if len(bits) == 1
                    else client.write_coils(start, bits, device_id=unit)
                )
            else:
                words = [value & 0xFFFF for _, _, value in cells]
                request = (
                    client.write_register(start, words[0], device_id=unit)
                    if len(words) == 1
                    else client.write_registers(start, words, device_id=unit)
                )
            await self._call(what, request)

    def _runs(self, values: Values) -> list[tuple[str, int, list[tuple[str, ModbusPoint, int]]]]:
        """The outputs among `values` as runs of consecutive coils or registers, each one
        request (a PLC applies a multiple write at once: a verdict whose registers are
        neighbours arrives whole, in one round trip). The run holding the sequence counter is
        written last; the others in `OUTPUTS` order."""
        cells: list[tuple[str, int, str, ModbusPoint, int]] = []
        for name in OUTPUTS:
            point: ModbusPoint | None = getattr(self.config.outputs, name)
            if point is not None and name in values:
                kind = "coil" if point.coil is not None else "register"
                address = point.coil if point.coil is not None else point.holding
                assert address is not None
                cells.append((kind, address, name, point, int(values[name])))
        runs: list[tuple[str, int, list[tuple[str, ModbusPoint, int]]]] = []
        for kind, address, name, point, value in sorted(cells, key=lambda c: (c[0], c[1])):
            last = runs[-1] if runs else None
            if last is not None and last[0] == kind and last[1] + len(last[2]) == address:
                last[2].append((name, point, value))
            else:
                runs.append((kind, address, [(name, point, value)]))

        def order(run: tuple[str, int, list[tuple[str, ModbusPoint, int]]]) -> tuple[bool, int]:
            names = [name for name, _, _ in run[2]]
            return "sequence" in names, min(OUTPUTS.index(name) for name in names)

        return sorted(runs, key=order)

    async def read_sequence(self) -> int | None:
        point = self.config.outputs.sequence
        return None if point is None else await self._read_point("outputs.sequence", point)
