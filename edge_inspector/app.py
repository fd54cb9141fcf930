"""The composition root: the engine and what serves it (the HTTP API, MQTT, the OPC UA server
for SCADA), wired in one place for `edge-inspector run`, `edge-inspector demo` and the service.

    async with Application(config, sinks=[...], mqtt_url=url) as app:
        ...  # app.engine, app.api, app.bridge, app.scada

Started in order (engine, SCADA server, HTTP API, MQTT) and stopped in reverse, except that
MQTT stops last: the engine's last incidents reach its outbox first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Self

from .config import EngineConfig, VlmConfig
from .errors import ConfigError, EdgeInspectorError

if TYPE_CHECKING:
    from types import TracebackType

    from .api.server import ApiServer
    from .engine import Engine
    from .mqtt.bridge import MqttBridge
    from .plc.scada import OpcuaScadaServer
    from .sinks import EventSink

__all__ = ["Application", "stop_signals", "with_http", "with_ollama"]


def with_ollama(config: EngineConfig, host: str | None, model: str | None = None) -> EngineConfig:
    """The configuration with the VLM pointed at `host` and `model` (--ollama, --vlm-model)."""
    if not host and not model:
        return config
    changes = {k: v for k, v in (("host", host), ("model", model)) if v}
    try:
        vlm = VlmConfig.model_validate({**config.vlm.model_dump(), **changes})
    except ValueError as exc:
        raise ConfigError(f"--ollama {host}: not a valid Ollama URL ({exc})") from None
    return config.model_copy(update={"vlm": vlm})


def with_http(config: EngineConfig, port: int | None) -> EngineConfig:
    """The configuration with the HTTP API on `port` (--http; 0 picks a free port)."""
    if port is None:
        return config
    http = config.http.model_copy(update={"enabled": True, "port": port})
    return config.model_copy(update={"http": http})


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM (as systemd stops a service), while inside."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        yield stop
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


class Application:
    """The engine with its HTTP API (when `config.http.enabled`), its MQTT bridge (with
    `mqtt_url` or `mqtt:` in the file) and its OPC UA server (with `opcua_server:`)."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        sinks: Iterable[EventSink] = (),
        mqtt_url: str | None = None,
    ) -> None:
        from .api.server import ApiServer
        from .engine import Engine
        from .mqtt import attach_mqtt

        self.engine: Engine = Engine(config, sinks=sinks)
        self.bridge: MqttBridge | None = attach_mqtt(self.engine, mqtt_url)
        self.api: ApiServer | None = None
        if config.http.enabled:
            self.api = ApiServer(self.engine, config.http, bridge=self.bridge)
            self.engine.sinks.add(self.api)
        self.scada: OpcuaScadaServer | None = self._scada()

    def _scada(self) -> OpcuaScadaServer | None:
        settings = self.engine.config.opcua_server
        if settings is None:
            return None
        try:
            from .plc.scada import OpcuaScadaServer
        except ImportError as exc:
            raise EdgeInspectorError(
                f"opcua_server needs {exc.name}: pip install 'edge-inspector[plc]'"
            ) from exc
        server = OpcuaScadaServer(self.engine, settings.endpoint, namespace=settings.namespace)
        self.engine.sinks.add(server)
        return server

    async def start(self) -> None:
        await self.engine.start()
        try:
            if self.scada is not None:
                await self.scada.start()
            if self.api is not None:
                await self.api.start()
            if self.bridge is not None:
                await self.bridge.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.scada is not None:
            await self.scada.stop()
        await self.engine.stop()  # the last incidents reach the outbox before MQTT stops
        if self.bridge is not None:
            await self.bridge.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
