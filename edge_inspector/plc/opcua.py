"""The PLC link over OPC UA (asyncua): the trigger by subscription, outputs written with each
node's own data type."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import Subscription
from asyncua.ua.uaerrors import UaError

from .config import OUTPUTS, OpcuaPlcConfig
from .driver import EdgeCallback, Ids, PlcError, Values

__all__ = ["OpcuaDriver"]

# asyncua logs every request at INFO and a reconnection's every step as a warning
logging.getLogger("asyncua").setLevel(logging.ERROR)

_INTEGERS = {
    ua.VariantType.SByte,
    ua.VariantType.Byte,
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Int64,
    ua.VariantType.UInt64,
}
_FLOATS = {ua.VariantType.Float, ua.VariantType.Double}


class _Trigger:
    """asyncua's subscription handler: each rising edge of the trigger, told as its value
    arrives (in order), with the ids' read started; `failed` is set when the watch must end."""

    def __init__(self, driver: OpcuaDriver, edge: EdgeCallback) -> None:
        self._driver = driver
        self._edge = edge
        self.failed: asyncio.Future[PlcError] = asyncio.get_running_loop().create_future()
        self._was_high = False  # the first notification is the current value: high is an edge

    def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
        high = bool(value)
        if high and not self._was_high:
            ids = asyncio.ensure_future(self._driver.read_ids())
            ids.add_done_callback(self._read)
            self._edge(ids)
        self._was_high = self._driver.trigger_high = high

    def _read(self, ids: asyncio.Future[Ids]) -> None:
        error = None if ids.cancelled() else ids.exception()
        if error is not None:  # the connection is in doubt: the watch ends, the link reconnects
            self._fail(error if isinstance(error, PlcError) else PlcError(repr(error)))

    def status_change_notification(self, status: Any) -> None:
        self._fail(PlcError(f"{self._driver.describe()}: the subscription ended: {status}"))

    def _fail(self, error: PlcError) -> None:
        if not self.failed.done():
            self.failed.set_result(error)


class OpcuaDriver:
    def __init__(self, config: OpcuaPlcConfig) -> None:
        self.config = config
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._nodes: dict[str, Node] = {}
        self._types: dict[str, ua.VariantType] = {}
        self._subscription: Subscription | None = None
        self.trigger_high = False

    def describe(self) -> str:
        return self.config.describe()

    def _fail(self, what: str, exc: BaseException) -> PlcError:
        return PlcError(f"{self.describe()}: {what}: {exc}")

    async def _lost_connection(self, exc: Exception) -> None:
        self._lost.set()

    async def connect(self) -> None:
        await self.close()
        self._lost.clear()
        client = Client(self.config.url, timeout=self.config.timeout_s)
        client.session_timeout = 30_000
        client.connection_lost_callback = self._lost_connection
        try:
            await client.connect()
        except (OSError, TimeoutError, UaError) as exc:
            raise self._fail("cannot connect", exc) from exc
        self._client = client
        prefix = ""
        if self.config.namespace is not None:
            try:
                prefix = f"ns={await client.get_namespace_index(self.config.namespace)};"
            except (UaError, ValueError) as exc:
                raise self._fail(f"namespace {self.config.namespace!r}", exc) from exc
        wanted = {
            "trigger": self.config.trigger,
            "part_id": self.config.part_id,
            "lot_id": self.config.lot_id,
            **{f"outputs.{n}": getattr(self.config.outputs, n) for n in OUTPUTS},
        }
        for name, node_id in wanted.items():
            if node_id is None:
                continue
            full = node_id if node_id.startswith("ns=") else prefix + node_id
            node = client.get_node(full)
            try:  # every configured node is read once, so a wrong map fails here, by name
                kind = await node.read_data_type_as_variant_type()
                await node.read_value()
            except (UaError, ValueError, ConnectionError, TimeoutError) as exc:
                raise self._fail(f"{name} ({full})", exc) from exc
            self._nodes[name], self._types[name] = node, kind

    async def close(self) -> None:
        client, self._client = self._client, None
        self._subscription = None
        self._nodes.clear()
        if client is not None:
            with contextlib.suppress(OSError, ConnectionError, TimeoutError, UaError):
                await client.disconnect()

    async def read_ids(self) -> Ids:
        """The part and lot id, in one Read request."""
        names = [name for name in ("part_id", "lot_id") if name in self._nodes]
        if not names:
            return None, None
        assert self._client is not None
        try:
            read = await self._client.read_values([self._nodes[name] for name in names])
        except (UaError, ConnectionError, TimeoutError) as exc:
            raise self._fail(" and ".join(names), exc) from exc
        texts = dict(zip(names, read, strict=True))

        def text(name: str) -> str | None:
            value = texts.get(name)
            cleaned = str(value).strip() if value is not None else ""
            return cleaned or None

        return text("part_id"), text("lot_id")

    async def watch_trigger(self, edge: EdgeCallback) -> None:
        trigger = self._nodes.get("trigger")
        assert self._client is not None
        lost = asyncio.create_task(self._lost.wait())
        try:
            if trigger is None:
                await lost
                raise PlcError(f"{self.describe()}: connection lost")
            handler = _Trigger(self, edge)
            parameters = ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=self.config.publishing_ms,
                RequestedLifetimeCount=1000,
                RequestedMaxKeepAliveCount=50,  # keep-alives: no stale-subscription re-creation
                MaxNotificationsPerPublish=0,
                PublishingEnabled=True,
                Priority=0,
            )
            try:
                self._subscription = await self._client.create_subscription(parameters, handler)
                # queued values: a short pulse between two publishes still arrives as an edge
                await self._subscription.subscribe_data_change(
                    trigger, queuesize=16, sampling_interval=ua.Double(0.0)
                )
            except (UaError, ConnectionError, TimeoutError) as exc:
                raise self._fail("trigger subscription", exc) from exc
            watched: set[asyncio.Future[Any]] = {handler.failed, lost}
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if handler.failed.done():
                raise handler.failed.result()
            raise PlcError(f"{self.describe()}: connection lost")
        finally:
            lost.cancel()

    def _variant(self, name: str, value: int) -> ua.Variant:
        kind = self._types[name]
        if kind == ua.VariantType.Boolean:
            # true for NG (result), toggling (heartbeat), non-zero (the others)
            flag = (
                value == 2
                if name == "outputs.result"
                else bool(value % 2 if name == "outputs.heartbeat" else value)
            )
            return ua.Variant(flag, kind)
        if kind in _FLOATS:
            return ua.Variant(float(value), kind)
        if kind in _INTEGERS:
            return ua.Variant(int(value), kind)
        raise PlcError(f"{self.describe()}: {name}: a {kind.name} node cannot hold a number")

    async def write(self, values: Values) -> None:
        """One Write request for all of them (in `OUTPUTS` order, the sequence counter last):
        one round trip, and a server applies them in that order."""
        keys = [
            f"outputs.{name}"
            for name in OUTPUTS
            if name in values and f"outputs.{name}" in self._nodes
        ]
        if not keys:
            return
        assert self._client is not None
        try:
            variants = [self._variant(key, int(values[key[8:]])) for key in keys]
            # a bad status for any of them raises (UaStatusCodeError, naming it)
            await self._client.write_values([self._nodes[k] for k in keys], variants)
        except (UaError, ConnectionError, TimeoutError, OverflowError) as exc:
            raise self._fail(", ".join(keys), exc) from exc

    async def read_sequence(self) -> int | None:
        node = self._nodes.get("outputs.sequence")
        if node is None:
            return None
        try:
            return int(await node.read_value() or 0)
        except (UaError, ConnectionError, TimeoutError, TypeError, ValueError) as exc:
            raise self._fail("outputs.sequence", exc) from exc
