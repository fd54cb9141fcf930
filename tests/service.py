"""The engine as a real separate process serving its HTTP API (`edge-inspector run --http`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edge_inspector.demo import DEMO_MODEL

TOKEN = "test-token-0123456789abcdef"
DEFECTS = "{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_config(
    store: Path,
    port: int,
    *,
    token: str | None = TOKEN,
    fps: float = 4,
    vlm: str = "",
    dock_actions: str = "[]",
    dock_plc: str = "",
    extra: str = "",
) -> str:
    """Two stations: `line_a` reads its own (synthetic) camera, `dock` takes pushed pictures."""
    http = f"http: {{port: {port}" + (f", token: {token}" if token else "") + "}"
    return f"""
stations:
  - id: line_a
    name: Line A
    line: Line 1
    source: {{type: synthetic, seed: 3, defect_rate: 0.6, speed: 16}}
    model: {{path: {DEMO_MODEL}, imgsz: 320}}
    defects: {DEFECTS}
    fps: {fps}
  - id: dock
    name: Dock
    line: Line 2
    source: {{type: push}}
    mode: triggered
    model: {{path: {DEMO_MODEL}, imgsz: 320}}
    defects: {DEFECTS}
    actions: {dock_actions}
{f"    plc: {dock_plc}" if dock_plc else ""}
store: {{path: {store}}}
{http}
{vlm}
{extra}
"""


@dataclass
class Service:
    """`edge-inspector run` on a configuration file, restartable."""

    config: Path
    port: int
    token: str | None = TOKEN
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        self.log = self.config.with_suffix(f".{int(time.time() * 1000)}.log")
        env = {
            **os.environ,
            "YOLO_OFFLINE": "1",
            "PYTHONPATH": str(Path(__file__).parents[1]),
        }
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge_inspector.cli",
                    "run",
                    "-c",
                    str(self.config),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return int(code)

    def get(self, path: str, *, token: str | None = "default") -> tuple[int, bytes, str]:
        return self.request("GET", path, token=token)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = "default",
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes, str]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        bearer = self.token if token == "default" else token
        if bearer:
            req.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@contextmanager
def running_service(folder: Path, **config: object) -> Iterator[Service]:
    """A service with `service_config(folder / "store", ..., **config)`, stopped after; a clean
    exit (status 0) is part of the contract."""
    port = free_port()
    path = folder / "engine.yaml"
    path.write_text(service_config(folder / "store", port, **config))  # type: ignore[arg-type]
    svc = Service(path, port)
    svc.start()
    try:
        yield svc
    finally:
        code = svc.stop()
    assert code == 0, f"the service exited with {code}"
