"""The engine as an OPC UA server for SCADA: every station's state, KPIs and last verdict as
read-only variables a SCADA or historian can read or subscribe to (asyncua's server).

Node layout, in the namespace `namespace` (`ns=<index>`, found by its URI):

    Objects/EdgeInspector                      ns=<index>;s=EdgeInspector
      <station_id>                             ns=<index>;s=<station_id>
        Name, Enabled, Available, State, ...   ns=<index>;s=<station_id>.<Name>

`State` and `LastVerdict` use the PLC link's codes (`StateCode`, `ResultCode`). A verdict's
variables are written with `Sequence` last: a client that sees `Sequence` change reads a complete
verdict. Nothing is writable by clients: the server reports, it takes no commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shelve
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError

from ..detect.runtime import default_cache_dir
from ..errors import EdgeInspectorError
from ..events import InspectionResult, QualityReport, StationState, Verdict
from ..sinks import EventSink
from .config import ResultCode, StateCode

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["OpcuaScadaServer"]

# asyncua logs every request at INFO and each client's coming and going as a warning
logging.getLogger("asyncua").setLevel(logging.ERROR)

_LOGGER = logging.getLogger(__name__)
_UINT32 = 2**32
_V = ua.VariantType

# Each station's variables: their type, their value before the first state or verdict, and
# what they mean (their Description, for whoever maps them in the SCADA).
_VARIABLES: dict[str, tuple[ua.VariantType, Any, str]] = {
    "Name": (_V.String, "", "The station's name."),
    "Enabled": (_V.Boolean, False, "False while the station is paused."),
    "Available": (_V.Boolean, False, "False while its camera or model fails."),
    "State": (_V.Int16, StateCode.STOPPED, "1 running, 2 disabled, 3 unavailable, 0 stopped."),
    "Error": (_V.String, "", "Why the station is unavailable; empty when it is not."),
    "Inspections": (_V.UInt32, 0, "Inspections since the engine started."),
    "Defects": (_V.UInt32, 0, "Inspections with at least one defect."),
    "DefectRate": (
        _V.Double,
        0.0,
        "Failed inspections per inspection over the published range (quality.period, this "
        "shift by default), in percent, as GET /api/quality has it (0 before any).",
    ),
    "LastVerdict": (_V.Int16, 0, "The last inspection: 1 OK, 2 NG, 0 none yet."),
    "LastDefectClass": (_V.String, "", "The most confident defect of the last NG; empty if OK."),
    "LastConfidence": (_V.Double, 0.0, "That defect's confidence, 0 to 1; 0 if OK."),
    "LastPartId": (_V.String, "", "The last inspected part's id; empty if none was given."),
    "Sequence": (_V.UInt32, 0, "Counts verdicts; written last, so a change means a whole one."),
    # OPC UA's null date (1601-01-01) until the first verdict
    "LastInspection": (_V.DateTime, ua.get_win_epoch(), "When the last frame was taken (UTC)."),
}
_MISSING = object()


def _node_id(name: str, index: int) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(index))


def _ua_time(moment: datetime) -> ua.DateTime:
    return ua.DateTime.fromtimestamp(moment.timestamp(), UTC)


def _shelf_name() -> str:
    """The cached address space is asyncua's pickled nodes in the interpreter's default dbm:
    one per asyncua and Python version, so an upgrade never loads a shelf it cannot read. No
    dot in it: asyncua looks for `<name>.db` too (dbm.ndbm), by replacing the suffix."""
    try:
        asyncua_version = version("asyncua")
    except PackageNotFoundError:
        asyncua_version = "unknown"
    python = f"{sys.version_info[0]}_{sys.version_info[1]}"
    return f"address-space-asyncua-{asyncua_version.replace('.', '_')}-py{python}"


def _shelf_files(shelf: Path) -> list[Path]:
    """The shelf's files as asyncua finds them: the name itself (dbm.sqlite3, dbm.gnu), or with
    `.db` (dbm.ndbm)."""
    return [p for p in (shelf, shelf.with_name(f"{shelf.name}.db")) if p.is_file()]


def _prepare_shelf(cache_dir: Path) -> tuple[Path | None, Path | None]:
    """(the shelf to load, or None; where to build one, or None). No shelf at all when the
    cache cannot be written: the server then starts without one, only slower."""
    shelf = cache_dir / _shelf_name()
    if _shelf_files(shelf):
        return shelf, None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _LOGGER.warning("OPC UA: no address-space cache in %s: %s", cache_dir, exc)
        return None, None
    # built under a name of its own and moved in place when whole: another process may be
    # reading or building the same shelf
    return None, shelf.with_name(f"{shelf.name}-part-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _publish_shelf(part: Path, shelf: Path | None) -> None:
    """Move a freshly built shelf's files in place, each keeping what its dbm added to the
    name; with `shelf` None, remove them (the build failed)."""
    for built in part.parent.glob(f"{part.name}*"):
        try:
            if shelf is None:
                built.unlink()
            else:
                built.replace(shelf.with_name(shelf.name + built.name[len(part.name) :]))
        except OSError as exc:
            _LOGGER.warning("OPC UA: address-space cache not kept: %s", exc)
            with contextlib.suppress(OSError):
                built.unlink()


def _discard_shelf(shelf: Path) -> None:
    for path in _shelf_files(shelf):
        with contextlib.suppress(OSError):
            path.unlink()


def _close_shelf(server: Server) -> None:
    """asyncua opens the shelf for the life of the address space and never closes it."""
    source = getattr(getattr(server.iserver.aspace, "_nodes", None), "source", None)
    if isinstance(source, shelve.Shelf):
        with contextlib.suppress(Exception):
            source.close()


@dataclass
class _Station:
    """One station's variables, and the values last written (unchanged ones are not rewritten)."""

    nodes: dict[str, Node]
    values: dict[str, Any] = field(default_factory=dict)
    sequence: int = 0


class OpcuaScadaServer(EventSink):
    """Serves the engine's stations over OPC UA (no security, anonymous, read-only). An event
    sink: add it to `engine.sinks`, then `start()` it; `stop()` it before the engine stops."""

    def __init__(
        self,
        engine: Engine,
        endpoint: str = "opc.tcp://127.0.0.1:4840",
        *,
        namespace: str = "urn:edge-inspector",
        cache_dir: Path | None = None,
    ) -> None:
        parsed = urlparse(endpoint)
        if parsed.scheme != "opc.tcp" or not parsed.hostname:
            raise EdgeInspectorError(f"OPC UA endpoint {endpoint!r}: expected opc.tcp://host:port")
        self.engine = engine
        self.endpoint = endpoint
        self.namespace = namespace
        self.namespace_index: int | None = None  # known once started
        self._cache_dir = cache_dir if cache_dir is not None else default_cache_dir() / "opcua"
        self._server: Server | None = None
        self._stations: dict[str, _Station] = {}
        self._lock = asyncio.Lock()  # one update at a time, in the order they came

    @property
    def url(self) -> str:
        """The endpoint clients connect to: with the port the system gave when it was 0."""
        parsed = urlparse(self.endpoint)
        bserver = self._server.bserver if self._server is not None else None
        if bserver is None or parsed.port != 0:
            return self.endpoint
        host = parsed.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return parsed._replace(netloc=f"{host}:{bserver.port}").geturl()

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- life -------------------------------------------------------------------------------

    async def _new_server(self) -> Server:
        """asyncua's server with the standard address space, from the cached shelf when there
        is one (5 ms instead of 1.5 s)."""
        shelf, part = await asyncio.to_thread(_prepare_shelf, self._cache_dir)
        if shelf is not None:
            server = Server()
            try:
                await server.init(shelf)
            except Exception as exc:  # a shelf cut short, or of a different make: built again
                _LOGGER.warning(
                    "OPC UA: address-space cache %s unreadable (%s); rebuilt", shelf, exc
                )
                _close_shelf(server)
                await asyncio.to_thread(_discard_shelf, shelf)
                shelf, part = await asyncio.to_thread(_prepare_shelf, self._cache_dir)
            else:
                return server
        server = Server()
        if part is None:
            await server.init()
            return server
        try:
            await server.init(part)
        except Exception as exc:  # the cache could not be written (a full disk): none then
            _LOGGER.warning("OPC UA: address-space cache not written: %s", exc)
            await asyncio.to_thread(_publish_shelf, part, None)
            server = Server()
            await server.init()
            return server
        except BaseException:  # cancelled: no half-built shelf left behind
            _publish_shelf(part, None)
            raise
        await asyncio.to_thread(_publish_shelf, part, self._cache_dir / _shelf_name())
        return server

    async def start(self) -> None:
        """Listen on the endpoint, with a node for every station of the engine (running or
        failed to start), filled with its current state."""
        if self._server is not None:
            return
        server = await self._new_server()
        try:
            server.disable_clock(True)  # no write a second to the server's own status
            server.set_endpoint(self.endpoint)
            server.set_server_name("Edge Inspector")
            await server.set_application_uri(f"{self.namespace}:server")
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
            server.allow_remote_admin(False)  # no client may write, whatever it calls itself
            index = await server.register_namespace(self.namespace)
            stations = await self._address_space(server, index)
            async with self._lock:
                self._stations = stations  # from here on, states and verdicts update the nodes
                # the states now, not those the nodes were made from: they may have changed
                for state in self.engine.states():
                    await self._write_state(state)
            await server.start()
        except BaseException as exc:
            self._stations = {}
            with contextlib.suppress(Exception):
                await server.stop()
            _close_shelf(server)
            if isinstance(exc, OSError | UaError):  # the port taken, the address not ours
                raise EdgeInspectorError(f"OPC UA server on {self.endpoint}: {exc}") from exc
            raise
        self._server, self.namespace_index = server, index
        _LOGGER.info("OPC UA server for SCADA on %s (namespace %s)", self.url, self.namespace)

    async def _address_space(self, server: Server, index: int) -> dict[str, _Station]:
        """EdgeInspector, and under it an object of read-only variables for each station."""
        root = await server.nodes.objects.add_object(
            _node_id("EdgeInspector", index), ua.QualifiedName("EdgeInspector", index)
        )
        stations: dict[str, _Station] = {}
        for state in self.engine.states():
            sid = state.station_id
            station = await root.add_object(_node_id(sid, index), ua.QualifiedName(sid, index))
            nodes = {}
            for name, (kind, initial, meaning) in _VARIABLES.items():
                # made read-only: no CurrentWrite in AccessLevel nor UserAccessLevel
                node = await station.add_variable(
                    _node_id(f"{sid}.{name}", index),
                    ua.QualifiedName(name, index),
                    ua.Variant(initial, kind),
                )
                await node.write_attribute(
                    AttributeIds.Description,
                    ua.DataValue(ua.Variant(ua.LocalizedText(meaning), _V.LocalizedText)),
                )
                nodes[name] = node
            stations[sid] = _Station(nodes)
        return stations

    async def stop(self) -> None:
        """Say STOPPED on every station, close the clients' sessions, stop listening."""
        server = self._server
        if server is None:
            return
        async with self._lock:
            for sid in self._stations:
                await self._write(sid, {"State": StateCode.STOPPED}, datetime.now(UTC))
            self._server, self._stations = None, {}
        try:
            # subscribers are sent STOPPED now, not at their next publishing interval: their
            # sessions end just below (best effort: a client with no publish request waiting
            # at the server sees the connection end instead)
            for subscription in list(server.iserver.subscription_service.subscriptions.values()):
                with contextlib.suppress(Exception):
                    await subscription.publish_results()
            # the clients' sessions first: the server's stop() alone leaves them running
            for session in list(server.iserver._external_sessions.values()):
                with contextlib.suppress(Exception):
                    await session.close_session()
            await server.stop()
        finally:
            _close_shelf(server)

    # -- events in --------------------------------------------------------------------------

    async def on_station_state(self, state: StationState) -> None:
        async with self._lock:
            await self._write_state(state)

    async def on_inspection(self, result: InspectionResult) -> None:
        async with self._lock:
            known = self._stations.get(result.station_id)
            if known is None:
                return
            defects = result.defects  # any defect is an NG; none, an OK
            top = max(defects, key=lambda d: d.confidence) if defects else None
            known.sequence = (known.sequence + 1) % _UINT32
            values: dict[str, Any] = {
                "LastVerdict": ResultCode.NG if result.verdict is Verdict.FAIL else ResultCode.OK,
                "LastDefectClass": top.class_name if top is not None else "",
                "LastConfidence": top.confidence if top is not None else 0.0,
                "LastPartId": result.part_id or "",
                "LastInspection": result.timestamp,
            }
            # the counters as the station has them now: no waiting for its next state (sent
            # at most once a second)
            station = self.engine.stations.get(result.station_id)
            if station is not None:
                values.update(self._counters(station.inspections, station.defects))
            values["Sequence"] = known.sequence  # last: the verdict is whole when it changes
            await self._write(result.station_id, values, result.timestamp)

    async def on_quality(self, report: QualityReport) -> None:
        """The defect rate as the engine publishes it (one definition: edge_inspector.quality)."""
        async with self._lock:
            for row in report.stations:
                if row.station_id is not None and row.station_id in self._stations:
                    rate = row.defect_rate_percent or 0.0
                    await self._write(row.station_id, {"DefectRate": rate}, report.computed_at)

    # -- values out -------------------------------------------------------------------------

    @staticmethod
    def _counters(inspections: int, defects: int) -> dict[str, Any]:
        # nothing out of a variable's range: asyncua would store it, then fail every read of it
        return {
            "Inspections": min(max(inspections, 0), _UINT32 - 1),
            "Defects": min(max(defects, 0), _UINT32 - 1),
        }

    async def _write_state(self, state: StationState) -> None:
        if state.station_id not in self._stations:
            return
        if not state.enabled:
            code = StateCode.DISABLED
        else:
            code = StateCode.RUNNING if state.available else StateCode.UNAVAILABLE
        values: dict[str, Any] = {
            "Name": state.name,
            "Enabled": state.enabled,
            "Available": state.available,
            "State": code,
            "Error": state.error or "",
            **self._counters(state.inspections, state.defects),
        }
        await self._write(state.station_id, values, state.updated_at)

    async def _write(self, station_id: str, values: dict[str, Any], when: datetime) -> None:
        """Write the values that changed, in order, each as its variable's own type. A failure
        is logged, never raised: SCADA is told what can be told, the engine goes on."""
        known = self._stations.get(station_id)
        if known is None:
            return
        now = datetime.now(UTC)
        for name, value in values.items():
            if known.values.get(name, _MISSING) == value:
                continue
            kind = _VARIABLES[name][0]
            try:
                await known.nodes[name].write_value(
                    ua.DataValue(
                        Value=ua.Variant(value, kind),
                        SourceTimestamp=_ua_time(when),
                        ServerTimestamp=_ua_time(now),
                    )
                )
            except Exception:
                _LOGGER.error(
                    "OPC UA: station %s: %s = %r not written",
                    station_id,
                    name,
                    value,
                    exc_info=True,
                )
                continue
            known.values[name] = value
