"""The Node-RED flows in flows/, loaded into a real Node-RED, fed real engine events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as clock
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_inspector.detect.runtime import default_cache_dir
from edge_inspector.events import BoundingBox, Detection, Incident, ModelInfo
from edge_inspector.quality import Shifts, quality_report
from edge_inspector.store.history import ClassCount, FeedbackCounts, InspectionCounts
from tests.mosquitto import Mosquitto, Watcher, free_port

FLOWS = Path(__file__).parents[2] / "flows"
RED = default_cache_dir() / "node" / "node_modules" / "node-red" / "red.js"
NOT_JSON = "Failed to parse JSON string"  # what an `mqtt in` node for JSON logs of anything else


@dataclass
class NodeRed:
    tickets: Path  # the file the ticket flow writes
    admin: str  # Node-RED's admin API (no login in these settings)

    def flow_context(self, flow: str, key: str) -> Any:
        """A value a flow keeps in its context, as the editor's context panel shows it."""
        with urllib.request.urlopen(f"{self.admin}/context/flow/{flow}/{key}", timeout=5) as r:
            value = json.loads(r.read())
        return json.loads(value["msg"]) if value.get("format") == "Object" else None

    def wait_for_context(
        self, flow: str, key: str, check: Callable[[Any], bool], timeout: float = 20
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check(value := self.flow_context(flow, key)):
            assert time.monotonic() < deadline, f"flow {flow}: {key} is {value!r}"
            time.sleep(0.05)


def _wait_for_log(
    proc: subprocess.Popen[bytes], log: Path, check: Callable[[str], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not check(log.read_text()):
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def _publish_retained(port: int, messages: dict[str, bytes]) -> None:
    """Publish retained messages and return once the broker has them all."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node-red-probe")
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "the probe could not connect"
        sent = [client.publish(t, p, qos=1, retain=True) for t, p in messages.items()]
        for info in sent:
            info.wait_for_publish(10)
            assert info.is_published(), "the broker did not take a probe"
    finally:
        client.disconnect()
        client.loop_stop()


def _wait_for_subscriptions(
    proc: subprocess.Popen[bytes], log: Path, nodes: dict[str, dict[str, Any]], port: int
) -> None:
    """Return once every `mqtt in` node of the flows gets what is published on its topic.

    Node-RED subscribes just after it connects. A retained probe that is not JSON reaches a
    node whenever its subscription is made, and the node logs that it could not parse it."""
    subscribers = [n for n in nodes.values() if n["type"] == "mqtt in"]
    probes = {n["topic"].replace("+", "probe"): b"a probe, not JSON" for n in subscribers}
    _publish_retained(port, probes)
    names = [str(n["name"]) for n in subscribers]

    def all_told(text: str) -> bool:
        return all(
            text.count(f"[mqtt in:{name}] {NOT_JSON}") >= names.count(name) for name in names
        )

    _wait_for_log(proc, log, all_told, 30)
    _publish_retained(port, dict.fromkeys(probes, b""))  # an empty retained message clears one


@pytest.fixture
def node_red(tmp_path: Path, broker: Mosquitto) -> Iterator[NodeRed]:
    """Node-RED with every flow of flows/, each of its subscriptions live."""
    if not RED.is_file():
        pytest.fail(f"Node-RED is missing at {RED}: `make test` installs it (scripts/setup.sh)")
    nodes: dict[str, dict[str, object]] = {}
    for path in sorted(FLOWS.glob("*.json")):
        for node in json.loads(path.read_text()):
            nodes[node["id"]] = node  # the broker config node is shared by the three files
    user_dir = tmp_path / "node-red"
    user_dir.mkdir()
    (user_dir / "flows.json").write_text(json.dumps(list(nodes.values())))
    ui_port = free_port()
    (user_dir / "settings.js").write_text(f"""module.exports = {{
  uiHost: "127.0.0.1", uiPort: {ui_port}, flowFile: "flows.json", credentialSecret: false,
  logging: {{ console: {{ level: "info" }} }}, externalModules: {{ autoInstall: false }},
}};
""")
    tickets = tmp_path / "tickets" / "incidents.jsonl"
    env = {
        **os.environ,
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(broker.port),
        "LINE_STATIONS": "press_1,belt",
        "STOP_TOPIC": "plant/line2/command",
        "STOP_CLASSES": "",
        "TICKET_FILE": str(tickets),
    }
    log = tmp_path / "node-red.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                "node",
                str(RED),
                "--settings",
                str(user_dir / "settings.js"),
                "--userDir",
                str(user_dir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            _wait_for_log(proc, log, lambda text: "Connected to broker" in text, 60)
            _wait_for_subscriptions(proc, log, nodes, broker.port)
            yield NodeRed(tickets, f"http://127.0.0.1:{ui_port}")
        finally:
            proc.terminate()
            proc.wait(10)


def _incident(n: int, station: str, cls: str, part: str | None = None) -> bytes:
    box = BoundingBox(x1=1, y1=2, x2=30, y2=40)
    det = Detection(class_name=cls, class_id=0, confidence=0.87, box=box, defect=True)
    return (
        Incident(
            incident_id=f"inc-{n}",
            station_id=station,
            station_name=station.title(),
            created_at=datetime.now(UTC),
            inspection_id=f"i{n}",
            part_id=part,
            defect_class=cls,
            confidence=0.87,
            boxes=(box,),
            detections=(det,),
            frame_path=f"/data/images/{n}.jpg",
            model=ModelInfo(name="m.pt", sha256="0" * 64),
            latency_ms=20,
        )
        .model_dump_json()
        .encode()
    )


class _History:
    """What a store would answer, for the engine's own computation of the figures."""

    def __init__(self, stations: dict[str, tuple[int, int, dict[str, int]]]) -> None:
        self.stations = stations  # id: (inspections, failed, incidents by class)

    async def inspection_counts(
        self, *, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> InspectionCounts:
        inspections, failed, _ = self.stations[station_id or ""]
        return InspectionCounts(inspections, failed)

    async def counts_by_class(
        self, *, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> list[ClassCount]:
        return [ClassCount(c, n) for c, n in self.stations[station_id or ""][2].items()]

    async def feedback_counts(
        self, *, station_id: str | None, since: datetime | None, until: datetime | None
    ) -> FeedbackCounts:
        return FeedbackCounts(confirmed=0, rejected=0, missed=0)


def _figures(
    period: str, history: dict[str, tuple[int, int, dict[str, int]]], hour: int = 13
) -> bytes:
    """The engine's QualityReport (`edge_inspector/quality` or `shift_report`), computed by the
    engine's code from a history."""
    shifts = Shifts([clock(6), clock(14), clock(22)], UTC)
    now = datetime(2026, 11, 30, hour, 30, tzinfo=UTC)
    span = shifts.period(period, now)
    names = {sid: sid.replace("_", " ").title() for sid in history}
    report = asyncio.run(quality_report(_History(history), names, span, now=now))
    return report.model_dump_json().encode()


def _ids(watcher: Watcher, topic: str) -> list[str]:
    return [json.loads(p)["incident_id"] for p in watcher.on(topic)]


def test_defects_notify_the_operator_stop_the_line_and_open_tickets(
    node_red: NodeRed,
    broker: Mosquitto,
) -> None:
    notify, stop = "edge_inspector/notify/operator", "plant/line2/command"
    watcher = Watcher(
        broker.port, notify, stop, "edge_inspector/report/shift", client_id="flow-watcher"
    )
    send = watcher.client.publish
    send("edge_inspector/belt/defect", _incident(1, "belt", "scratch", "P-1"), qos=1)
    send("edge_inspector/belt/defect", _incident(1, "belt", "scratch", "P-1"), qos=1)  # resent
    send("edge_inspector/belt/defect", _incident(2, "belt", "dent"), qos=1)
    send("edge_inspector/press_9/defect", _incident(3, "press_9", "scratch"), qos=1)
    # A flow handles its messages in order: a note or a stop for the resent defect would come
    # before the ones for the defects sent after it.
    watcher.wait(lambda: "inc-3" in _ids(watcher, notify) and "inc-2" in _ids(watcher, stop))

    notes = [json.loads(p) for p in watcher.on(notify)]
    assert [n["incident_id"] for n in notes] == ["inc-1", "inc-2", "inc-3"]  # duplicate dropped
    assert notes[0]["title"] == "Defect on Belt"
    assert notes[0]["message"] == "scratch (87 %) on part P-1"
    stops = [json.loads(p) for p in watcher.on(stop)]
    assert [s["incident_id"] for s in stops[:2]] == ["inc-1", "inc-2"]
    assert stops[0] == {
        "command": "stop",
        "reason": "defect scratch on belt",
        "incident_id": "inc-1",
    }

    # An incident updated later (e.g. by the VLM) adds a line to its ticket.
    updated = json.loads(_incident(2, "belt", "dent"))
    updated["state"] = "acknowledged"
    send("edge_inspector/belt/incident", json.dumps(updated), qos=1)
    deadline = time.monotonic() + 10
    while not node_red.tickets.exists() or len(node_red.tickets.read_text().splitlines()) < 4:
        assert time.monotonic() < deadline, "the ticket log did not get four lines"
        time.sleep(0.1)
    tickets = [json.loads(line) for line in node_red.tickets.read_text().splitlines()]
    assert [(t["ticket"], t["kind"]) for t in tickets] == [
        ("inc-1", "opened"),
        ("inc-2", "opened"),
        ("inc-3", "opened"),
        ("inc-2", "updated"),
    ]
    assert tickets[3]["state"] == "acknowledged"
    assert tickets[0]["image"] == "/data/images/1.jpg"

    # The shift so far, on request: the engine's figures (retained `quality`), copied.
    shift = {"belt": (40, 2, {"scratch": 2, "dent": 1}), "press_9": (10, 1, {"scratch": 1})}
    send("edge_inspector/quality", _figures("this shift", shift), qos=1, retain=True)
    node_red.wait_for_context("ei_flow_report", "current", lambda c: c is not None)
    send("edge_inspector/report/request", "{}", qos=1)
    watcher.wait(lambda: watcher.on("edge_inspector/report/shift"))
    report = json.loads(watcher.on("edge_inspector/report/shift")[0])
    assert report["period"] == "this shift" and report["complete"] is False
    assert (report["defects"], report["inspections"]) == (4, 50)
    assert report["by_class"] == {"scratch": 3, "dent": 1}
    belt = report["stations"]["belt"]
    assert (belt["inspections"], belt["failed"], belt["defects"]) == (40, 2, 3)
    assert (belt["defect_rate"], belt["yield"]) == (5.0, 95.0)  # the engine's, not recounted
    assert report["defect_rate"] == 6.0  # 3 failed of 50

    # The end of a shift: the engine's report of it, once, even when it comes again (it is
    # retained: a redeployed flow gets it again). A request after it is the marker.
    ended = _figures("last shift", {"belt": (120, 3, {"scratch": 3})}, hour=14)
    send("edge_inspector/shift_report", ended, qos=1, retain=True)
    send("edge_inspector/shift_report", ended, qos=1, retain=True)
    send("edge_inspector/report/request", "{}", qos=1)
    watcher.wait(lambda: len(watcher.on("edge_inspector/report/shift")) >= 3)
    reports = [json.loads(r) for r in watcher.on("edge_inspector/report/shift")]
    assert [r["complete"] for r in reports] == [False, True, False]
    assert reports[1]["period"] == "the last shift"
    assert reports[1]["stations"]["belt"]["defect_rate"] == 2.5
    assert (reports[1]["shift_start"], reports[1]["shift_end"]) == (
        "2026-11-30T06:00:00Z",
        "2026-11-30T14:00:00Z",
    )

    # press_9 is not on line 2, and a defect seen twice stops the line once. A last defect on
    # the line is the marker: a stop for either would have come before its stop.
    send("edge_inspector/belt/defect", _incident(4, "belt", "crack"), qos=1)
    watcher.wait(lambda: "inc-4" in _ids(watcher, stop))
    assert _ids(watcher, stop) == ["inc-1", "inc-2", "inc-4"]
    watcher.close()
