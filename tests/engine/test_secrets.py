"""No credential leaves the engine: a known secret in every kind of camera source and in the
broker URL, then every surface a client can read is searched for it.

`edge-inspector run` (a real process) serves stations whose cameras are unreachable, so each
one fails and carries the library's error text (PyAV and aiohttp quote the URL they were
given); the surfaces: the unauthenticated health check, the stations API (all and each), the
metrics, the websocket's station states, the retained MQTT state topics on a real Mosquitto,
and the service's log.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path

import aiohttp
import paho.mqtt.client as mqtt
import pytest

from edge_inspector.demo import DEMO_MODEL
from edge_inspector.errors import ConfigError
from edge_inspector.redact import RedactingFilter, redact
from tests.mosquitto import Mosquitto
from tests.service import TOKEN, Service, free_port

SECRETS = {
    "rtsp": "S3cret-rtsp-Pa55",
    "query": "S3cret-query-Pa55",
    "mjpeg": "S3cret-mjpeg-Pa55",
    "field": "S3cret-field-Pa55",
    "token": "S3cret-token-Pa55",
}
DEFECTS = "{scratch: 0.4, dent: 0.4, crack: 0.4, spot: 0.4}"


def _config(tmp_path: Path, port: int) -> Path:
    closed = free_port()  # nothing listens there: every camera fails
    station = """
  - id: {id}
    name: {id}
    source: {source}
    model: {{path: {model}, imgsz: 320}}
    defects: {defects}
    fps: 2"""
    sources = {
        "cam_rtsp": f'{{type: rtsp, url: "rtsp://admin:{SECRETS["rtsp"]}@127.0.0.1:{closed}/s1", '
        "timeout: 2}",
        "cam_query": f'{{type: http_snapshot, url: "http://127.0.0.1:{closed}/snap.jpg?'
        f'user=admin&pwd={SECRETS["query"]}&token={SECRETS["token"]}", timeout: 2}}',
        "cam_mjpeg": f'{{type: mjpeg, url: "http://viewer:{SECRETS["mjpeg"]}@127.0.0.1:{closed}'
        '/video.mjpg", timeout: 2}',
        "cam_field": f'{{type: http_snapshot, url: "http://127.0.0.1:{closed}/snap.jpg", '
        f'username: admin, password: "{SECRETS["field"]}", timeout: 2}}',
    }
    body = "stations:" + "".join(
        station.format(id=sid, source=source, model=DEMO_MODEL, defects=DEFECTS)
        for sid, source in sources.items()
    )
    body += f"\nstore: {{path: {tmp_path / 'store'}}}\nhttp: {{port: {port}, token: {TOKEN}}}\n"
    path = tmp_path / "engine.yaml"
    path.write_text(body)
    return path


def _leaks(surface: str, text: str) -> list[str]:
    return [f"{surface}: {name}" for name, secret in SECRETS.items() if secret in text] + (
        [f"{surface}: the broker's password"] if Mosquitto.PASSWORD in text else []
    )


def _retained_states(broker: Mosquitto, stations: set[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: states.__setitem__(msg.topic, msg.payload.decode())
    client.connect("127.0.0.1", broker.port)
    client.subscribe("edge_inspector/+/state")
    client.loop_start()
    try:
        deadline = time.monotonic() + 30
        wanted = {f"edge_inspector/{sid}/state" for sid in stations}
        while not wanted <= states.keys() or not all(
            json.loads(states[t]).get("error") for t in wanted
        ):
            assert time.monotonic() < deadline, f"retained states: {sorted(states)}"
            time.sleep(0.2)
    finally:
        client.loop_stop()
        client.disconnect()
    return states


async def test_no_surface_shows_a_camera_or_broker_credential(
    tmp_path: Path, broker: Mosquitto
) -> None:
    port = free_port()
    mqtt_url = f"mqtt://{Mosquitto.USER}:{Mosquitto.PASSWORD}@127.0.0.1:{broker.auth_port}"
    service = Service(_config(tmp_path, port), port, extra_args=["--mqtt", mqtt_url])
    service.start()
    stations = {"cam_rtsp", "cam_query", "cam_mjpeg", "cam_field"}
    try:
        # every station has failed and says why (the error text is there, only cleaned)
        deadline = time.monotonic() + 60
        while True:
            status, body, _ = service.get("/api/stations")
            states = (
                {s["station_id"]: s for s in json.loads(body)["stations"]} if status == 200 else {}
            )
            if states and all(states[sid].get("error") for sid in stations):
                break
            assert time.monotonic() < deadline, states
            await asyncio.sleep(0.2)
        assert "127.0.0.1" in states["cam_rtsp"]["error"] or "rtsp" in states["cam_rtsp"]["error"]
        surfaces = {"GET /api/stations": body.decode()}
        _, health, _ = service.get("/api/health", token=None)
        surfaces["GET /api/health (no token)"] = health.decode()
        for sid in sorted(stations):
            surfaces[f"GET /api/stations/{sid}"] = service.get(f"/api/stations/{sid}")[1].decode()
        surfaces["GET /metrics"] = service.get("/metrics")[1].decode()
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
            session.ws_connect(f"{service.url}/api/ws") as ws,
        ):
            seen: dict[str, str] = {}
            async with asyncio.timeout(30):
                while not stations <= seen.keys():
                    message = await ws.receive_json()
                    if message["type"] == "station_state":
                        seen[message["data"]["station_id"]] = json.dumps(message)
        surfaces["websocket station_state"] = "\n".join(seen.values())
        retained = await asyncio.to_thread(_retained_states, broker, stations)
        surfaces["MQTT retained state"] = "\n".join(retained.values())
    finally:
        assert service.stop() == 0
    assert service.log is not None
    surfaces["the service's log"] = service.log.read_text()
    leaks = [leak for name, text in surfaces.items() for leak in _leaks(name, text)]
    assert not leaks, leaks
    # the failures are still explained: the log names the cameras, without their secrets
    assert "cam_query" in surfaces["the service's log"]


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("cannot open rtsp://admin:pw@10.0.0.5:554/s1: refused", "rtsp://***@10.0.0.5:554/s1"),
        ("url='http://cam/snap?user=a&pwd=pw&x=1'", "url='http://cam/snap?user=a&pwd=***&x=1'"),
        ("mqtts://ops@plant:pw@broker:8883", "mqtts://***@broker:8883"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("http://host/path?mail=a@b.c&token=zz", "http://host/path?mail=a@b.c&token=***"),
        ("no URL here = fine", "no URL here = fine"),
    ],
)
def test_redaction_keeps_the_text_and_drops_the_secret(text: str, clean: str) -> None:
    assert clean in redact(text)
    assert "pw" not in redact(text).replace("pwd", "") and "zz" not in redact(text)


def test_the_log_filter_cleans_messages_and_tracebacks() -> None:
    handler_output = io.StringIO()
    handler = logging.StreamHandler(handler_output)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("tests.redact")
    log.addHandler(handler)
    try:
        log.warning("camera %s failed", "rtsp://admin:pw-in-args@10.0.0.5/s1")
        try:
            raise OSError("cannot open http://cam/snap?pwd=pw-in-traceback")
        except OSError:
            log.exception("snapshot failed")
    finally:
        log.removeHandler(handler)
    text = handler_output.getvalue()
    assert "pw-in-args" not in text and "pw-in-traceback" not in text, text
    assert "rtsp://***@10.0.0.5/s1" in text and "Traceback" in text and "pwd=***" in text


def test_a_configuration_errors_problems_are_redacted_like_its_message() -> None:
    error = ConfigError(
        "stations[0].source.url: rtsp://admin:pw-in-message@cam/s1 is not reachable",
        problems=("stations[0].source.url: rtsp://admin:pw-in-problem@cam/s1",),
    )
    assert "pw-in-message" not in str(error)
    assert error.problems == ("stations[0].source.url: rtsp://***@cam/s1",)
