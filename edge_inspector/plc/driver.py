"""What a PLC protocol's driver offers the link (`PlcDriver`), and the types they share; the
drivers (modbus.py, opcua.py) and the link (link.py) import this, not each other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ..errors import EdgeInspectorError

__all__ = ["EdgeCallback", "Ids", "PlcDriver", "PlcError", "Values"]

type Values = dict[str, int | bool]
type Ids = tuple[str | None, str | None]  # the part id and the lot id
type EdgeCallback = Callable[[asyncio.Future[Ids]], None]


class PlcError(EdgeInspectorError):
    """The PLC could not be reached, or refused a read or a write."""


class PlcDriver(Protocol):
    """One protocol's side of the link (Modbus TCP, OPC UA)."""

    trigger_high: bool  # the trigger as last read (or notified)

    def describe(self) -> str: ...

    async def connect(self) -> None:
        """Connect and check every configured point (PlcError naming the one that fails)."""

    async def close(self) -> None: ...

    async def watch_trigger(self, edge: EdgeCallback) -> None:
        """Call `edge(ids)` for each rising edge, at once, with the reading of the part and
        lot id under way (the camera need not wait for it), until the connection fails
        (PlcError). A trigger already high when this starts counts as an edge."""

    async def write(self, values: Values) -> None:
        """Write the configured outputs among `values`, in `OUTPUTS` order."""

    async def read_sequence(self) -> int | None:
        """The sequence counter's value in the PLC (None: not configured)."""
