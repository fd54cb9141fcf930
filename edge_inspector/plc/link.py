"""One station's PLC link: trigger edges in, verdicts out, a heartbeat and the station's state
as a code; it reconnects with back-off and loses no verdict.

- Each rising edge of the trigger is one inspection. The part and lot id are read at the edge;
  edges that come while the station is busy wait in a bounded queue (in order, each inspected
  once); an edge beyond the queue is refused, counted and logged, never inspected twice.
- Every inspection of the station (a PLC trigger's, or one made over HTTP, MQTT or Home
  Assistant) is a verdict for the PLC: result, defect code, confidence, then the sequence
  counter, so a PLC that sees the counter change reads a complete verdict. A trigger whose
  inspection fails (camera down, station disabled) is answered too: result 0 (no verdict).
- Verdicts are numbered when they are made and wait, in order, while the PLC is away; after a
  reconnection they are written then, each with its own number. A verdict whose write was cut
  short is written again with the same number: the counter says it is the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from ..errors import EdgeInspectorError
from ..events import InspectionResult, StationState, Verdict
from ..sinks import EventSink
from ..sources.base import Backoff
from ..tasks import cancel
from .config import ModbusPlcConfig, OpcuaPlcConfig, ResultCode, StateCode
from .driver import Ids, PlcDriver, PlcError, Values

if TYPE_CHECKING:
    from ..station import Station

__all__ = ["PlcDriver", "PlcError", "PlcLink", "make_driver"]  # PlcDriver, PlcError: driver.py

_LOGGER = logging.getLogger(__name__)
_PENDING_MAX = 10_000  # verdicts kept while the PLC is away (then the oldest are dropped, logged)


def make_driver(config: ModbusPlcConfig | OpcuaPlcConfig) -> PlcDriver:
    try:
        if isinstance(config, ModbusPlcConfig):
            from .modbus import ModbusDriver

            return ModbusDriver(config)
        from .opcua import OpcuaDriver

        return OpcuaDriver(config)
    except ImportError as exc:
        raise EdgeInspectorError(
            f"the PLC link needs {exc.name}: pip install 'edge-inspector[plc]'"
        ) from exc


class PlcLink(EventSink):
    """A station's PLC. An event sink: it hears the station's inspections and states."""

    def __init__(
        self,
        station: Station,
        config: ModbusPlcConfig | OpcuaPlcConfig,
        driver: PlcDriver | None = None,
    ) -> None:
        self.station = station
        self.config = config
        self.driver = driver or make_driver(config)
        names = config.codes or {n: i for i, n in enumerate(station.config.defects, start=1)}
        self._codes = dict(names)
        self.connected = asyncio.Event()
        self.error: str | None = None
        self.sequence: int | None = None  # the last number given (None: read it from the PLC)
        self.edges = 0
        self.refused_edges = 0
        self.written = 0
        self._edges: asyncio.Queue[asyncio.Future[Ids]] = asyncio.Queue(config.queue)
        self._pending: deque[Values] = deque()
        self._wake = asyncio.Event()
        self._state_code: int | None = None
        self._heartbeat = 0
        self._tasks: list[asyncio.Task[None]] = []

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        name = f"edge_inspector {self.station.id} plc"
        self._tasks = [
            asyncio.create_task(self._connection(), name=name),
            asyncio.create_task(self._inspector(), name=f"{name} triggers"),
        ]

    async def stop(self) -> None:
        """Say STOPPED (if the PLC is there), write what is waiting, disconnect."""
        if self.connected.is_set() and self.config.outputs.state is not None:
            self._queue_state(StateCode.STOPPED)
        if self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    while self._pending and self.connected.is_set():
                        self._wake.set()
                        await asyncio.sleep(0.01)
        await cancel(*self._tasks)
        self._tasks = []
        await self.driver.close()

    @property
    def pending(self) -> int:
        """Verdicts and states not yet written to the PLC."""
        return len(self._pending)

    # -- the connection ---------------------------------------------------------------------

    async def _connection(self) -> None:
        backoff = Backoff(initial=0.5, maximum=self.config.reconnect_max_s)
        while True:
            try:
                await self.driver.connect()
                if self.sequence is None:  # continue from the PLC's counter (a restart)
                    self.sequence = await self.driver.read_sequence() or 0
                self._up()
                backoff.reset()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self.driver.watch_trigger(self._edge))
                    group.create_task(self._writer())
                    group.create_task(self._beat())
            except* PlcError as group_error:
                self._down(str(group_error.exceptions[0]))
            except* (OSError, TimeoutError) as group_error:
                self._down(f"{self.driver.describe()}: {group_error.exceptions[0]}")
            except* Exception as group_error:  # a fault of ours: logged whole, then retried
                _LOGGER.error(
                    "station %s: PLC link failed",
                    self.station.id,
                    exc_info=group_error.exceptions[0],
                )
                self._down(f"{self.driver.describe()}: {group_error.exceptions[0]!r}")
            with contextlib.suppress(Exception):
                await self.driver.close()
            await asyncio.sleep(backoff.next_delay())

    def _up(self) -> None:
        if self.error is not None:
            _LOGGER.info("station %s: PLC %s is back", self.station.id, self.driver.describe())
        else:
            _LOGGER.info("station %s: PLC %s connected", self.station.id, self.driver.describe())
        self.error = None
        self.connected.set()
        self.station.set_plc("connected", None)
        self._queue_state(self._code(self.station.state()), force=True)

    def _down(self, error: str) -> None:
        if self.error is None:  # once per outage
            _LOGGER.warning(
                "station %s: PLC unavailable (%s); verdicts wait (%d), retrying",
                self.station.id,
                error,
                len(self._pending),
            )
        self.error = error
        self.connected.clear()
        self.station.set_plc("unavailable", error)

    # -- triggers in ------------------------------------------------------------------------

    def _edge(self, ids: asyncio.Future[Ids]) -> None:
        self.edges += 1
        try:
            self._edges.put_nowait(ids)
        except asyncio.QueueFull:
            self.refused_edges += 1
            _LOGGER.warning(
                "station %s: PLC trigger refused, %d already waiting",
                self.station.id,
                self._edges.qsize(),
            )

    async def _inspector(self) -> None:
        while True:
            ids = await self._edges.get()
            try:
                # the frame is captured while the ids are read; they join it before the model
                await self.station.inspect_now(identify=ids)
            except (EdgeInspectorError, TimeoutError) as exc:
                _LOGGER.warning("station %s: PLC trigger not inspected: %s", self.station.id, exc)
                self._queue_verdict({"result": 0, "defect_code": 0, "confidence": 0})

    # -- verdicts out -----------------------------------------------------------------------

    async def on_verdict(self, result: InspectionResult) -> None:
        if result.station_id != self.station.id:
            return
        defects = result.defects
        top = max(defects, key=lambda d: d.confidence) if defects else None
        failed = result.verdict is Verdict.FAIL
        self._queue_verdict(
            {
                "result": ResultCode.NG if failed else ResultCode.OK,
                "defect_code": self._codes.get(top.class_name, 0) if top and failed else 0,
                "confidence": round(1000 * top.confidence) if top else 0,
            }
        )

    async def on_station_state(self, state: StationState) -> None:
        if state.station_id == self.station.id:
            self._queue_state(self._code(state))

    @staticmethod
    def _code(state: StationState) -> int:
        if not state.enabled:
            return StateCode.DISABLED
        return StateCode.RUNNING if state.available else StateCode.UNAVAILABLE

    def _queue_state(self, code: int, *, force: bool = False) -> None:
        if self.config.outputs.state is None or (code == self._state_code and not force):
            return
        self._state_code = code
        self._push({"state": code})

    def _queue_verdict(self, values: Values) -> None:
        if self.config.outputs.sequence is not None:
            self.sequence = ((self.sequence or 0) + 1) % 65536
            values = {**values, "sequence": self.sequence}
        self._push(values)

    def _push(self, values: Values) -> None:
        if len(self._pending) >= _PENDING_MAX:
            dropped = self._pending.popleft()
            _LOGGER.warning("station %s: PLC away too long, dropped %s", self.station.id, dropped)
        self._pending.append(values)
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            while self._pending:
                await self.driver.write(self._pending[0])  # written again if this fails
                self._pending.popleft()
                self.written += 1
            self._wake.clear()
            await self._wake.wait()

    async def _beat(self) -> None:
        if self.config.outputs.heartbeat is None:
            return
        while True:
            self._heartbeat = (self._heartbeat + 1) % 65536
            await self.driver.write({"heartbeat": self._heartbeat})
            await asyncio.sleep(self.config.heartbeat_s)
