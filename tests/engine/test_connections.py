"""Connections that do not behave: a websocket client that stops reading is closed with 1013
(documented: reconnect with `since`), not left to the heartbeat; idle and half-open HTTP
connections are closed by the server."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from edge_inspector.api.server import ApiServer
from edge_inspector.config import EngineConfig, HttpConfig
from edge_inspector.demo.synthetic import ConveyorFrame
from edge_inspector.engine import Engine
from tests.conftest import jpeg
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
    engine.sinks.add(server)
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


def _connect(server: ApiServer) -> socket.socket:
    assert server.url is not None
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    sock.settimeout(30)
    return sock


def _until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started, received = time.monotonic(), b""
    while chunk := sock.recv(4096):
        received += chunk
    return received, time.monotonic() - started


async def test_silent_half_open_and_idle_connections_are_closed_real_clients_are_not(
    make_config: Callable[..., EngineConfig], clean_scene: ConveyorFrame
) -> None:
    async with _server(make_config, header_timeout_s=1.0, idle_timeout_s=1.0) as server:
        # connects and says nothing
        silent = _connect(server)
        received, took = await asyncio.to_thread(_until_closed, silent)
        assert took < 10 and b"408" in received.split(b"\r\n")[0]
        # half a request header, then nothing (slowloris), without a token
        half = _connect(server)
        half.sendall(b"GET /api/stations HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        received, took = await asyncio.to_thread(_until_closed, half)
        assert took < 10 and received.startswith(b"HTTP/1.1 408")
        # a whole request, then the connection left idle: answered, then closed
        idle = _connect(server)
        idle.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received, took = await asyncio.to_thread(_until_closed, idle)
        assert received.startswith(b"HTTP/1.1 200") and took < 10

        # what real clients do is not cut: a live view and a websocket held past the deadlines
        station = server.engine.stations["press"]
        await station.inspect_image(jpeg(clean_scene.image))
        url = server.url
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/api/stations/press/stream.mjpeg") as stream,
            session.ws_connect(f"{url}/api/ws?events=inspection") as ws,
        ):
            held_until = time.monotonic() + 3  # three deadlines
            frames = 0
            while time.monotonic() < held_until:
                await station.inspect_image(jpeg(clean_scene.image))
                async with asyncio.timeout(10):
                    while b"--frame" not in await stream.content.readline():
                        pass
                frames += 1
            assert frames >= 2
            await station.inspect_image(jpeg(clean_scene.image))
            async with asyncio.timeout(10):  # still connected: the newest inspection arrives
                while (await ws.receive_json())["type"] != "inspection":
                    pass
            assert not ws.closed
