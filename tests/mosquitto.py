"""A real Mosquitto broker for tests, on free loopback ports, stopped and restarted at will."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """Listener 1: anonymous. Listener 2: user `inspector` / password `s3cret` only."""

    USER, PASSWORD = "inspector", "s3cret"

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("mosquitto is missing: `make test` installs it (scripts/setup.sh)")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.auth_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        passwords = folder / "passwords"
        passwords.write_text("")
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), self.USER, self.PASSWORD], check=True
        )
        passwords.chmod(0o600)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"""user root
per_listener_settings true
persistence true
persistence_location {folder}/
log_dest file {folder}/mosquitto.log
listener {self.port} 127.0.0.1
allow_anonymous true
listener {self.auth_port} 127.0.0.1
allow_anonymous false
password_file {passwords}
"""
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    log = (self.folder / "mosquitto.log").read_text(errors="replace")
                    pytest.fail(f"mosquitto exited: {log[-2000:]}")
                time.sleep(0.05)
        pytest.fail("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
