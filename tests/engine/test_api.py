"""The engine as a service: `edge-inspector run` as a real separate process, driven over HTTP,
the websocket and MJPEG; its metrics read by prometheus_client's parser; its OpenAPI document
checked against the server's routes and answers."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import jsonschema
import numpy as np
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from edge_inspector import __version__
from edge_inspector.api.openapi import build, render
from edge_inspector.demo.synthetic import ConveyorFrame
from tests.service import TOKEN, Service, running_service
from tests.waiting import until

OPENAPI = Path(__file__).parents[2] / "edge_inspector" / "api" / "openapi.json"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("service")) as svc:
        yield svc


def _json(body: bytes) -> Any:
    return json.loads(body)


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for one schema of the OpenAPI document (its $refs resolve in it)."""
    document = json.loads(OPENAPI.read_text())
    cls = jsonschema.validators.validator_for(
        {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    )
    return cls({**schema, "components": document["components"]})


def _response_schema(path: str, method: str = "get", status: str = "200") -> dict[str, Any]:
    document = json.loads(OPENAPI.read_text())
    response = document["paths"][path][method]["responses"][status]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


async def _ws(service: Service, query: str = "") -> aiohttp.ClientWebSocketResponse:
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    ws = await session.ws_connect(f"{service.url}/api/ws{query}")
    ws._test_session = session  # type: ignore[attr-defined]
    return ws


async def _close(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.close()
    await ws._test_session.close()  # type: ignore[attr-defined]


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 30) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            if message["type"] == kind:
                return message


def _raw_get(service: Service, path: str, authorization: bytes) -> int:
    """The status for a GET with this Authorization header, bytes as given (no client library
    would send some of them)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: " + authorization + b"\r\nConnection: close\r\n\r\n"
        )
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def test_the_openapi_document_is_committed_and_matches_the_routes(service: Service) -> None:
    from edge_inspector.api.server import ApiServer

    assert OPENAPI.read_text() == render(), "run: python -m edge_inspector.api.openapi > ..."
    status, body, _ = service.get("/api/openapi.json", token=None)  # no token needed
    assert status == 200 and _json(body) == build()

    class _Engine:  # the routes do not depend on the engine
        def __init__(self) -> None:
            self.action_ports: dict[str, Any] = {}

    from edge_inspector.config import HttpConfig

    server = ApiServer(_Engine(), HttpConfig())  # type: ignore[arg-type]
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in server.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(method, path) for path, ops in build()["paths"].items() for method in ops}
    assert routes == documented


def test_a_token_is_required_and_errors_are_json(service: Service) -> None:
    status, body, kind = service.get("/api/stations", token=None)
    assert status == 401 and kind.startswith("application/json")
    assert _json(body)["error"]["code"] == "unauthorized"
    assert service.get("/api/stations", token="wrong-token-0123456789")[0] == 401
    # the scheme's name in any case; a header that is not even text is refused, not a 500
    for header, want in (
        (f"bearer {TOKEN}".encode(), 200),
        (f"BEARER {TOKEN}".encode(), 200),
        (b"Bearer \xff\xfe\xc3(", 401),
        ("Bearer tökén".encode(), 401),
    ):
        assert _raw_get(service, "/api/stations", header) == want, header
    assert service.get(f"/metrics?token={TOKEN}", token=None)[0] == 200
    health = service.get("/api/health", token=None)
    assert health[0] == 200
    _validator(_response_schema("/api/health")).validate(_json(health[1]))

    bad = [
        (("GET", "/api/nowhere", None), 404),
        (("GET", "/api/stations/nope", None), 404),
        (("GET", "/api/incidents?limit=0", None), 400),
        (("GET", "/api/incidents?limit=abc", None), 400),
        (("GET", "/api/incidents?since=yesterday", None), 400),
        (("GET", "/api/inspections?verdict=maybe", None), 400),
        (("GET", "/api/incidents/nope", None), 404),
        (("POST", "/api/stations/line_a/enabled", {"enabled": "yes"}), 400),
        (("POST", "/api/stations/line_a/enabled", {}), 400),
        (("POST", "/api/stations/line_a/thresholds", {"class": "rust", "confidence": 0.5}), 400),
        (("POST", "/api/stations/line_a/thresholds", {"confidence": 1.5}), 400),
        # a threshold so small that every frame carries hundreds of boxes
        (("POST", "/api/stations/line_a/thresholds", {"confidence": 5e-324}), 400),
        (("POST", "/api/stations/line_a/thresholds", {"confidence": 0.009}), 400),
        (("POST", "/api/stations/line_a/frames", None), 400),  # empty body
        (("POST", "/api/incidents/nope/verdict", {"state": "confirmed"}), 404),
        (("POST", "/api/incidents/nope/verdict", {"state": "lost"}), 400),
        (("POST", "/api/incidents/nope/actions/r1", {"approve": True}), 409),
        (("DELETE", "/api/stations", None), 405),
        # strict: no coercion, no unknown fields, bounded sizes, known classes
        (("POST", "/api/stations/line_a/enabled", {"enabled": 1}), 400),
        (("POST", "/api/stations/line_a/thresholds", {"confidence": "0.5"}), 400),
        (("POST", "/api/stations/line_a/thresholds", {"confidence": True}), 400),
        (("POST", "/api/stations/line_a/enabled", {"enabled": True, "colour": "red"}), 400),
        (("POST", "/api/stations/line_a/inspect", {"part_id": "P" * 129}), 400),
        (("POST", "/api/incidents", {"station_id": "line_a", "defect_class": "rust"}), 400),
        (
            (
                "POST",
                "/api/incidents",
                {"station_id": "line_a", "defect_class": "dent", "part_id": "P" * 100_000},
            ),
            413,
        ),
        (("POST", "/api/incidents/nope/verdict", {"by": "x" * 101}), 400),
        # dates whose time zone pushes them out of the calendar
        (("GET", "/api/stats/series?since=0001-01-01T00:00:00%2B05:00", None), 400),
        (
            (
                "GET",
                "/api/stats/series?since=2026-01-01T00:00:00&until=9999-12-31T23:59:59-05:00",
                None,
            ),
            400,
        ),
    ]
    for (method, path, body), want in bad:
        status, raw, kind = service.request(method, path, body)
        assert status == want, (method, path, status, raw[:200])
        assert kind.startswith("application/json"), (method, path)
        _validator({"$ref": "#/components/schemas/Error"}).validate(_json(raw))
    status, raw, _ = service.request(
        "POST", "/api/stations/line_a/enabled", raw=b"{not json", content_type="application/json"
    )
    assert status == 400 and _json(raw)["error"]["code"] == "invalid_json"
    for hostile in (b"[" * 30_000 + b"]" * 30_000, b'{"enabled": ' + b"9" * 5_000 + b"}"):
        status, raw, _ = service.request(
            "POST", "/api/stations/line_a/enabled", raw=hostile, content_type="application/json"
        )
        assert status == 400 and _json(raw)["error"]["code"] == "invalid_json", raw
    # the service is still up after all that
    assert service.get("/api/health")[0] == 200


def test_path_traversal_reads_nothing_outside_the_store(service: Service) -> None:
    for path in (
        "/api/incidents/..%2F..%2Fhistory.sqlite3/images/frame",
        "/api/incidents/x/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/stations/..%2F..%2Fetc/snapshot.jpg",
        "/api/../../etc/passwd",
        "/api/incidents/%2e%2e/images/frame",
    ):
        status, body, _ = service.get(path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body and b"SQLite" not in body


async def test_stations_commands_frames_incidents_and_the_push_channel(
    service: Service, defect_scenes: list[ConveyorFrame]
) -> None:
    status, body, _ = service.get("/api/stations")
    assert status == 200
    _validator(_response_schema("/api/stations")).validate(_json(body))
    assert {s["station_id"] for s in _json(body)["stations"]} == {"line_a", "dock"}

    ws = await _ws(service, "?events=incident,incident_update,station_state,inspection")
    try:
        first = await _until(ws, "station_state")
        assert first["data"]["station_id"] in ("line_a", "dock")
        await _until(ws, "ready")
        live = await _until(ws, "inspection")  # the synthetic camera runs continuously
        assert live["data"]["station_id"] == "line_a"

        # a picture pushed to the push station (as Home Assistant does for its cameras)
        ok, jpeg = cv2.imencode(".jpg", defect_scenes[0].image)
        assert ok
        status, body, _ = service.request(
            "POST",
            "/api/stations/dock/frames?part_id=P-1",
            raw=jpeg.tobytes(),
            content_type="image/jpeg",
        )
        assert status == 200, body
        result = _json(body)
        _validator({"$ref": "#/components/schemas/InspectionResult"}).validate(result)
        assert result["verdict"] == "fail" and result["part_id"] == "P-1"
        assert result["new_incident_ids"]
        pushed: list[str] = []
        async with asyncio.timeout(30):
            while len(pushed) < len(result["new_incident_ids"]):
                message = await ws.receive_json()
                if message["type"] == "incident" and message["data"]["station_id"] == "dock":
                    pushed.append(message["data"]["incident_id"])
        assert set(pushed) == set(result["new_incident_ids"])
        incident_id = pushed[0]

        status, body, _ = service.request(
            "POST",
            "/api/stations/dock/frames",
            raw=b"this is not a picture",
            content_type="image/jpeg",
        )
        assert status == 422 and _json(body)["error"]["code"] == "bad_image"

        # the store: paged queries, one incident, its images
        status, body, _ = service.get("/api/incidents?station_id=dock&limit=5")
        assert status == 200
        _validator(_response_schema("/api/incidents")).validate(_json(body))
        listed = [i["incident_id"] for i in _json(body)["incidents"]]
        assert set(listed) == set(result["new_incident_ids"])  # one per defect on the part
        status, body, _ = service.get("/api/inspections?station_id=dock&verdict=fail")
        _validator(_response_schema("/api/inspections")).validate(_json(body))
        assert _json(body)["inspections"][0]["inspection_id"] == result["inspection_id"]
        assert service.get(f"/api/inspections/{result['inspection_id']}")[0] == 200
        for kind in ("frame", "crop"):
            status, body, ctype = service.get(f"/api/incidents/{incident_id}/images/{kind}")
            assert status == 200 and ctype == "image/jpeg"
            assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
        assert service.get(f"/api/incidents/{incident_id}/images/thumbnail")[0] == 404

        # a verdict: stored with who gave it, and pushed to clients
        status, body, _ = service.request(
            "POST",
            f"/api/incidents/{incident_id}/verdict",
            {"state": "confirmed", "by": "inspector 7", "note": "real scratch"},
        )
        assert status == 200 and _json(body)["state"] == "confirmed"
        update = await _until(ws, "incident_update")
        assert update["data"]["incident_id"] == incident_id
        assert update["data"]["extra"]["feedback"][-1]["by"] == "inspector 7"

        # counts and the rate series (what Home Assistant's remote mode reads), a missed defect
        status, body, _ = service.get("/api/stats?station_id=dock")
        stats = _json(body)
        _validator(_response_schema("/api/stats")).validate(stats)
        assert stats["inspections"] == 1 and stats["failed"] == 1
        assert sum(stats["by_class"].values()) == len(result["new_incident_ids"])
        assert stats["feedback"] == {"confirmed": 1, "rejected": 0, "missed": 0}
        status, body, _ = service.get(
            f"/api/stats/series?station_id=dock&since={result['timestamp'][:19]}Z&bucket_s=60"
        )
        series = _json(body)
        _validator(_response_schema("/api/stats/series")).validate(series)
        assert sum(p["failed"] for p in series["points"]) == 1
        assert service.get("/api/stats/series")[0] == 400  # since is required
        status, body, _ = service.request(
            "POST", "/api/incidents", {"station_id": "dock", "defect_class": "crack", "by": "qa"}
        )
        assert status == 201 and _json(body)["extra"]["missed"] is True
        stats = _json(service.get("/api/stats?station_id=dock")[1])
        assert stats["feedback"]["missed"] == 1
        # the quality figures over a range said in words
        status, body, _ = service.get("/api/quality?station_id=dock&period=today")
        assert status == 200, body
        quality = _json(body)
        _validator(_response_schema("/api/quality")).validate(quality)
        [dock] = quality["stations"]
        assert quality["period"] == "today" and not quality["complete"]
        assert (dock["inspections"], dock["failed"], dock["defect_rate_percent"]) == (1, 1, 100.0)
        assert (dock["confirmed"], dock["missed"], dock["false_accept_rate_percent"]) == (
            1,
            1,
            50.0,
        )
        everything = _json(service.get("/api/quality")[1])  # the published range, all stations
        assert [s["station_id"] for s in everything["stations"]] == ["line_a", "dock"]
        assert everything["total"]["inspections"] >= 1
        for path, code in (
            ("/api/quality?period=whenever", "invalid_period"),
            ("/api/quality?period=" + "x" * 101, "invalid_period"),
            ("/api/quality?station_id=nope", "station_not_found"),
        ):
            status, body, _ = service.get(path)
            assert status in (400, 404) and _json(body)["error"]["code"] == code, (path, body)
        status, body, _ = service.get("/api/manuals/search?q=scratch")
        assert status == 200 and _json(body) == {"indexed": False, "results": []}

        # commands: thresholds, enable/disable, inspect now
        status, body, _ = service.request(
            "POST", "/api/stations/line_a/thresholds", {"class": "dent", "confidence": 0.8}
        )
        assert status == 200 and _json(body)["thresholds"]["dent"] == 0.8
        status, body, _ = service.request(
            "POST", "/api/stations/line_a/enabled", {"enabled": False}
        )
        assert status == 200 and _json(body)["enabled"] is False
        status, body, _ = service.request("POST", "/api/stations/line_a/inspect", {})
        assert status == 409 and "disabled" in _json(body)["error"]["message"]
        status, body, _ = service.request("POST", "/api/stations/line_a/enabled", {"enabled": True})
        assert _json(body)["enabled"] is True
        status, body, _ = service.request(
            "POST", "/api/stations/line_a/inspect", {"part_id": "P-2", "lot_id": "L-9"}
        )
        assert status == 200, body
        assert (_json(body)["part_id"], _json(body)["lot_id"]) == ("P-2", "L-9")
    finally:
        await _close(ws)


async def test_the_annotated_live_view_is_an_mjpeg_stream(service: Service) -> None:
    frames: list[np.ndarray] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service.url}/api/stations/line_a/stream.mjpeg?token={TOKEN}") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
        buffer = b""
        async with asyncio.timeout(30):
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (start := buffer.find(b"\xff\xd8")) >= 0 and (
                    end := buffer.find(b"\xff\xd9", start)
                ) >= 0:
                    image = cv2.imdecode(
                        np.frombuffer(buffer[start : end + 2], np.uint8), cv2.IMREAD_COLOR
                    )
                    assert image is not None
                    frames.append(image)
                    buffer = buffer[end + 2 :]
                if len(frames) >= 3:
                    break
    assert frames[0].shape[2] == 3 and frames[0].shape[0] > 100
    status, body, ctype = service.get("/api/stations/line_a/snapshot.jpg")
    assert status == 200 and ctype == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
    assert service.get("/api/stations/line_a/stream.mjpeg", token=None)[0] == 401


async def test_metrics_parse_with_prometheus_client(service: Service) -> None:
    def scrape() -> dict[str, Metric]:
        status, body, kind = service.get("/metrics")
        assert status == 200 and kind.startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def has_latency(station: str) -> bool:
        latency = scrape()["edge_inspector_latency_seconds"].samples
        return any(s.labels.get("station") == station for s in latency)

    # on its own too (the synthetic camera runs continuously: an inspection comes)
    await until(lambda: has_latency("line_a"), "an inspection of line_a in /metrics")
    families = scrape()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    # every family (the PLC's are there only with a PLC): the types and help texts users scrape
    # and alert on, as they have always been (the parser names a counter without its _total)
    assert {name: (f.type, f.documentation) for name, f in families.items()} == {
        "edge_inspector_info": ("gauge", "The engine's version."),
        "edge_inspector_station_up": ("gauge", "1 while a station runs and is enabled."),
        "edge_inspector_frames": ("counter", "Frames read by each station."),
        "edge_inspector_frame_errors": ("counter", "Frames that could not be read."),
        "edge_inspector_inspections": ("counter", "Inspections by verdict."),
        "edge_inspector_defects": ("counter", "Defect incidents by class."),
        "edge_inspector_latency_seconds": (
            "histogram",
            "Frame to result (stage total) and model inference (stage inference).",
        ),
        "edge_inspector_queue_depth": ("gauge", "Work waiting, by queue."),
        "edge_inspector_vlm_up": ("gauge", "1 while the VLM answers (absent: VLM off)."),
        "edge_inspector_vlm_oldest_pending_seconds": (
            "gauge",
            "How long the oldest incident not answered by the VLM has waited (0: none waits).",
        ),
        "edge_inspector_vlm_skipped": (
            "counter",
            "Incidents the VLM skipped: they waited over vlm.max_age.",
        ),
        "edge_inspector_vlm_coalesced": (
            "counter",
            "Repeats answered by another incident's VLM call.",
        ),
        "edge_inspector_vlm_displaced": (
            "counter",
            "Incidents a full VLM queue left pending in the store, for later.",
        ),
        "edge_inspector_mqtt_connected": ("gauge", "1 while connected to the broker."),
        "edge_inspector_websocket_clients": ("gauge", "Clients of the push channel."),
    }
    label_sets = {(s.name, tuple(sorted(s.labels))) for f in families.values() for s in f.samples}
    assert {
        ("edge_inspector_info", ("version",)),
        ("edge_inspector_station_up", ("station",)),
        ("edge_inspector_frames_total", ("station",)),
        ("edge_inspector_inspections_total", ("station", "verdict")),
        ("edge_inspector_latency_seconds_bucket", ("le", "stage", "station")),
        ("edge_inspector_latency_seconds_sum", ("stage", "station")),
        ("edge_inspector_latency_seconds_count", ("stage", "station")),
        ("edge_inspector_queue_depth", ("queue",)),
        ("edge_inspector_queue_depth", ("queue", "station")),
        ("edge_inspector_websocket_clients", ()),
    } <= label_sets
    buckets = [
        s.labels["le"]
        for s in families["edge_inspector_latency_seconds"].samples
        if s.name.endswith("_bucket")
        and s.labels["stage"] == "total"
        and s.labels["station"] == "line_a"
    ]
    assert buckets == [
        *("0.005", "0.01", "0.02", "0.035", "0.05", "0.075", "0.1", "0.15", "0.25", "0.5"),
        *("1.0", "2.5", "5.0", "10.0", "+Inf"),
    ]
    assert samples[("edge_inspector_station_up", (("station", "line_a"),))] == 1
    assert samples[("edge_inspector_frames_total", (("station", "line_a"),))] > 0
    inspected = sum(
        v for (name, labels), v in samples.items() if name == "edge_inspector_inspections_total"
    )
    assert inspected > 0
    count = samples[
        ("edge_inspector_latency_seconds_count", (("stage", "total"), ("station", "line_a")))
    ]
    inf = samples[
        (
            "edge_inspector_latency_seconds_bucket",
            (("le", "+Inf"), ("stage", "total"), ("station", "line_a")),
        )
    ]
    assert count == inf > 0
    assert ("edge_inspector_queue_depth", (("queue", "inference"),)) in samples
    assert samples[("edge_inspector_info", (("version", __version__),))] == 1


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Service]:
    with running_service(tmp_path, fps=0.5) as svc:
        yield svc


async def test_after_a_restart_clients_catch_up_from_the_store(
    restartable: Service, defect_scenes: list[ConveyorFrame]
) -> None:
    svc = restartable
    status, body, _ = svc.get("/api/health")
    assert status == 200
    since = json.loads(body)  # just to have the service answer before we note the time
    from datetime import UTC, datetime

    mark = datetime.now(UTC).isoformat()
    ok, jpeg = cv2.imencode(".jpg", defect_scenes[1].image)
    assert ok
    assert (
        svc.request(
            "POST", "/api/stations/dock/frames", raw=jpeg.tobytes(), content_type="image/jpeg"
        )[0]
        == 200
    )
    assert svc.stop() == 0  # SIGTERM: a clean exit
    assert since["status"] in ("ok", "degraded")
    svc.start()
    ws = await _ws(svc, f"?events=incident&since={mark.replace('+', '%2B')}")
    try:
        replayed = []
        async with asyncio.timeout(30):
            while True:
                message = await ws.receive_json()
                if message["type"] == "ready":
                    break
                if message["type"] == "incident":
                    assert message["replay"] is True
                    replayed.append(message["data"]["station_id"])
        assert "dock" in replayed
    finally:
        await _close(ws)


async def test_service_actions_need_a_connected_home_assistant() -> None:
    from edge_inspector.api.server import ApiServer
    from edge_inspector.config import ActionConfig, HttpConfig
    from edge_inspector.tools.actions import ActionContext, ActionError

    class _Engine:
        def __init__(self) -> None:
            self.action_ports: dict[str, Any] = {}

    engine = _Engine()
    server = ApiServer(engine, HttpConfig())  # type: ignore[arg-type]
    assert engine.action_ports["service"] is server.actions
    action = ActionConfig.model_validate(
        {
            "name": "stop_line",
            "description": "Stop the line",
            "target": {"type": "service", "service": "switch.turn_off", "data": {}},
        }
    )
    context = ActionContext(station_id="s", incident_id="i", defect_class="dent")
    with pytest.raises(ActionError, match="no Home Assistant is connected"):
        await server.actions.execute(action, {}, context)
