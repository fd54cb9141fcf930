"""A real Mosquitto broker for tests, on free loopback ports, stopped and restarted at will."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """Listeners: anonymous; user `inspector` / password `s3cret` only; TLS (self-signed)."""

    USER, PASSWORD = "inspector", "s3cret"

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("mosquitto is missing: `make test` installs it (scripts/setup.sh)")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.auth_port = free_port()
        self.tls_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        passwords = folder / "passwords"
        passwords.write_text("")
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), self.USER, self.PASSWORD], check=True
        )
        passwords.chmod(0o600)
        # A self-signed certificate for 127.0.0.1, its own authority.
        self.cert, key = folder / "broker.crt", folder / "broker.key"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                str(key),
                "-out",
                str(self.cert),
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
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
listener {self.tls_port} 127.0.0.1
allow_anonymous true
cafile {self.cert}
certfile {self.cert}
keyfile {key}
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


class Watcher:
    """A subscriber with a persistent session, as a Node-RED flow or a service would have.

    Closed by the test; one a failing test left open is closed by `close_all` (an autouse
    fixture), so its network thread does not outlive the test."""

    _open: ClassVar[set[Watcher]] = set()

    def __init__(self, port: int, *topics: str, client_id: str = "watcher") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        Watcher._open.add(self)
        assert subscribed.wait(10), "the test subscriber could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait(self, check: Callable[[], object], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                topics = sorted({t for t, _, _ in self.messages})
                raise AssertionError(f"timed out; received topics {topics}")
            time.sleep(0.05)

    def close(self) -> None:
        Watcher._open.discard(self)
        self.client.loop_stop()
        self.client.disconnect()

    @classmethod
    def close_all(cls) -> None:
        for watcher in list(cls._open):
            watcher.close()
