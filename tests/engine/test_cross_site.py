"""A page in a browser on the engine's machine cannot drive the engine: the default set-up
(loopback, no token) against what such a page can send, and the real clients still working.

`edge-inspector run` as a real process; the requests are the ones a browser makes for a
cross-site page (a `no-cors` text/plain POST, a websocket from another origin, a name that a
rebinding DNS server points at 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.service import Service, running_service

EVIL = "http://evil.example"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with running_service(tmp_path, token=None) as svc:
        yield svc


def _enabled(service: Service) -> bool:
    _, body, _ = service.get("/api/stations/line_a", token=None)
    return bool(json.loads(body)["enabled"])


def _post(service: Service, path: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{service.url}{path}", data=body, method="POST")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_cross_site_page_cannot_disable_a_station(service: Service) -> None:
    off = json.dumps({"enabled": False}).encode()
    # what `fetch(..., {mode: "no-cors", headers: {"Content-Type": "text/plain"}})` sends
    assert (
        _post(
            service,
            "/api/stations/line_a/enabled",
            off,
            {"Content-Type": "text/plain", "Origin": EVIL},
        )
        == 403
    )
    # the same without the Origin (a non-browser client): JSON only with a JSON content type
    assert (
        _post(service, "/api/stations/line_a/enabled", off, {"Content-Type": "text/plain"}) == 415
    )
    # a page on a rebinding name, same origin as far as the browser knows
    assert (
        _post(
            service,
            "/api/stations/line_a/enabled",
            off,
            {"Content-Type": "application/json", "Host": f"evil.example:{service.port}"},
        )
        == 403
    )
    assert _enabled(service)
    # the engine's own origin, and clients that send none, still work
    own = {"Content-Type": "application/json", "Origin": service.url}
    assert _post(service, "/api/stations/line_a/enabled", off, own) == 200
    assert not _enabled(service)
    on = json.dumps({"enabled": True}).encode()
    assert (
        _post(service, "/api/stations/line_a/enabled", on, {"Content-Type": "application/json"})
        == 200
    )
    assert _enabled(service)


async def test_the_websocket_refuses_other_origins_and_anonymous_action_clients(
    service: Service,
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{service.url}/api/ws", headers={"Origin": EVIL})
        assert refused.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as anonymous:
            await session.ws_connect(f"{service.url}/api/ws?actions=1")
        assert anonymous.value.status == 403
        # a local client without an Origin follows the events
        async with session.ws_connect(f"{service.url}/api/ws") as ws:
            async with asyncio.timeout(30):
                message = await ws.receive_json()
            assert message["type"] == "station_state"


def test_the_live_view_still_streams_to_a_browser_tab(service: Service) -> None:
    # a tab that opens the MJPEG URL (a navigation: no Origin) gets the stream
    request = urllib.request.Request(f"{service.url}/api/stations/line_a/stream.mjpeg")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        assert response.read(2048).count(b"\xff\xd8") >= 1  # a JPEG in the first part
