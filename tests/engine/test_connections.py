"""Connections that do not behave: a websocket client that stops reading is closed with 1013
(documented: reconnect with `since`), not left to the heartbeat; idle and half-open HTTP
connections are closed by the server."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from edge_inspector.api.server import ApiServer
from edge_inspector.config import EngineConfig, HttpConfig
from edge_inspector.engine import Engine
from tests.waiting import until


@asynccontextmanager
async def _server(
    make_config: Callable[..., EngineConfig], **options: Any
) -> AsyncIterator[ApiServer]:
    config = make_config(
        """
        - id: press
          name: Press
          source: {type: push}
          model: {path: MODEL, imgsz: 320}
          defects: {scratch: 0.5}
        """
    )
    engine = Engine(config)
    await engine.start()
    server = ApiServer(engine, HttpConfig(port=0))
    for name, value in options.items():
        setattr(server, name, value)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await engine.stop()


class _Bulky:
    """An event of about 64 KB (a station state with a long error, say)."""

    def model_dump(self, mode: str) -> dict[str, str]:
        return {"filler": "x" * 65_536}


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One websocket frame from the server (unmasked): opcode, payload."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    head = exactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return head[0] & 0x0F, exactly(length)


async def test_a_websocket_client_that_stops_reading_is_closed_with_1013(
    make_config: Callable[..., EngineConfig],
) -> None:
    async with _server(make_config, send_timeout_s=3.0) as server:
        assert server.url is not None
        port = int(server.url.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: fills fast
        sock.settimeout(30)
        await asyncio.to_thread(sock.connect, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await until(lambda: server.clients, "the client is subscribed")
        (client,) = server.clients
        # the client reads nothing while the engine has a lot to say
        for _ in range(400):
            server._broadcast("station_state", _Bulky())
            await asyncio.sleep(0)
        await until(lambda: client.overflowed, "the client is found too slow", timeout=60)
        # what it finds when it reads again: the events it had, then the close, code 1013
        response = b""
        while b"\r\n\r\n" not in response:
            response += await asyncio.to_thread(sock.recv, 1)
        assert response.startswith(b"HTTP/1.1 101")
        while True:
            opcode, payload = await asyncio.to_thread(_read_frame, sock)
            if opcode == 0x8:
                break
        assert struct.unpack("!H", payload[:2])[0] == 1013
        assert b"reconnect with since" in payload
        sock.close()
        await until(lambda: not server.clients, "the client is gone")
