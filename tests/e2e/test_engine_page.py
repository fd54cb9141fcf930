"""The engine's live view in a real browser (headless Chromium, tests/e2e/engine_page.cjs) on
the default set-up, loopback without a token: opened directly and embedded in another site's
page it works; the cross-site attack of issue 16 from that page (a no-cors text/plain POST, a
websocket asking to carry out actions) changes nothing.

Screenshots: var/test-output/engine-page/{live-view,other-site}.png
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.test_card import NODE_MODULES
from tests.service import Service, running_service

ROOT = Path(__file__).parents[2]
OUT = ROOT / "var" / "test-output" / "engine-page"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with running_service(tmp_path, token=None) as svc:
        yield svc


@contextmanager
def _other_site(page: bytes) -> Iterator[str]:
    """Another origin on loopback (another port) serving one page."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_live_view_works_in_a_browser_and_another_sites_page_changes_nothing(
    service: Service,
) -> None:
    node = shutil.which("node")
    assert node, "node is needed for the browser test (scripts/setup.sh installs it)"
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    before = json.loads(service.get("/api/stations/line_a", token=None)[1])
    stream = f"{service.url}/api/stations/line_a/stream.mjpeg"
    page = f'<html><body><h1>Another site</h1><img id="live" src="{stream}"></body></html>'
    with _other_site(page.encode()) as site:
        proc = subprocess.run(
            [node, str(ROOT / "tests/e2e/engine_page.cjs"), service.url, "line_a", str(OUT), site],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES), "CHROMIUM": chromium},
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert result["ok"], result
    # the live view: shown by the browser itself, and as an image in another site's page
    assert result["direct"]["width"] > 100 and result["direct"]["height"] > 100
    assert result["embedded"] > 100
    # the attack: the browser sent it, the engine refused it, the station is as it was
    # (an opaque no-cors answer is reported once as the response, once as aborted for the page)
    answers = [r["status"] for r in result["requests"] if r["method"] == "POST" and "status" in r]
    assert answers == [403, 403], result["requests"]
    assert result["attack"]["ws"] == "refused"
    after = json.loads(service.get("/api/stations/line_a", token=None)[1])
    assert after["enabled"] is True
    assert after["thresholds"] == before["thresholds"]
