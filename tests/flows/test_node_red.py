"""The Node-RED flows in flows/, loaded into a real Node-RED, fed real engine events."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_inspector.detect.runtime import default_cache_dir
from edge_inspector.events import BoundingBox, Detection, Incident, ModelInfo, StationState
from tests.mosquitto import Mosquitto, Watcher, free_port

FLOWS = Path(__file__).parents[2] / "flows"
RED = default_cache_dir() / "node" / "node_modules" / "node-red" / "red.js"


@pytest.fixture
def node_red(tmp_path: Path, broker: Mosquitto) -> Iterator[Path]:
    """Node-RED with every flow of flows/; returns the ticket file's path."""
    if not RED.is_file():
        pytest.fail(f"Node-RED is missing at {RED}: `make test` installs it (scripts/setup.sh)")
    nodes: dict[str, dict[str, object]] = {}
    for path in sorted(FLOWS.glob("*.json")):
        for node in json.loads(path.read_text()):
            nodes[node["id"]] = node  # the broker config node is shared by the three files
    user_dir = tmp_path / "node-red"
    user_dir.mkdir()
    (user_dir / "flows.json").write_text(json.dumps(list(nodes.values())))
    (user_dir / "settings.js").write_text(f"""module.exports = {{
  uiHost: "127.0.0.1", uiPort: {free_port()}, flowFile: "flows.json", credentialSecret: false,
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
            deadline = time.monotonic() + 60
            while "Connected to broker" not in log.read_text():
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
            time.sleep(0.5)  # subscriptions go out just after the connection
            yield tickets
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


def _state(station: str, inspections: int) -> bytes:
    return (
        StationState(
            station_id=station,
            name=station,
            enabled=True,
            available=True,
            mode="continuous",
            inspections=inspections,
            updated_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode()
    )


def test_defects_notify_the_operator_stop_the_line_and_open_tickets(
    node_red: Path,
    broker: Mosquitto,
) -> None:
    watcher = Watcher(
        broker.port,
        "edge_inspector/notify/operator",
        "plant/line2/command",
        "edge_inspector/report/shift",
        client_id="flow-watcher",
    )
    send = watcher.client.publish
    send("edge_inspector/belt/state", _state("belt", 100), qos=1, retain=True)
    send("edge_inspector/press_9/state", _state("press_9", 10), qos=1, retain=True)
    time.sleep(0.5)
    send("edge_inspector/belt/defect", _incident(1, "belt", "scratch", "P-1"), qos=1)
    send("edge_inspector/belt/defect", _incident(1, "belt", "scratch", "P-1"), qos=1)  # resent
    send("edge_inspector/belt/defect", _incident(2, "belt", "dent"), qos=1)
    send("edge_inspector/press_9/defect", _incident(3, "press_9", "scratch"), qos=1)
    watcher.wait(lambda: len(watcher.on("edge_inspector/notify/operator")) >= 3)
    time.sleep(0.5)

    notes = [json.loads(p) for p in watcher.on("edge_inspector/notify/operator")]
    assert [n["incident_id"] for n in notes] == ["inc-1", "inc-2", "inc-3"]  # duplicate dropped
    assert notes[0]["title"] == "Defect on Belt"
    assert notes[0]["message"] == "scratch (87 %) on part P-1"
    stops = [json.loads(p) for p in watcher.on("plant/line2/command")]
    assert [s["incident_id"] for s in stops] == ["inc-1", "inc-2"]  # press_9 is not on line 2
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
    while not node_red.exists() or len(node_red.read_text().splitlines()) < 4:
        assert time.monotonic() < deadline, "the ticket log did not get four lines"
        time.sleep(0.1)
    tickets = [json.loads(line) for line in node_red.read_text().splitlines()]
    assert [(t["ticket"], t["kind"]) for t in tickets] == [
        ("inc-1", "opened"),
        ("inc-2", "opened"),
        ("inc-3", "opened"),
        ("inc-2", "updated"),
    ]
    assert tickets[3]["state"] == "acknowledged"
    assert tickets[0]["image"] == "/data/images/1.jpg"

    # The end of the shift: a report by class and station goes back on the bus.
    send("edge_inspector/belt/state", _state("belt", 140), qos=1, retain=True)
    time.sleep(0.5)
    send("edge_inspector/report/request", "{}", qos=1)
    watcher.wait(lambda: watcher.on("edge_inspector/report/shift"))
    report = json.loads(watcher.on("edge_inspector/report/shift")[0])
    assert report["defects"] == 3
    assert report["by_class"] == {"scratch": 2, "dent": 1}
    assert report["stations"]["belt"]["inspections"] == 40
    assert report["stations"]["belt"]["defect_rate"] == 5.0
    # The next shift starts empty.
    send("edge_inspector/report/request", "{}", qos=1)
    watcher.wait(lambda: len(watcher.on("edge_inspector/report/shift")) == 2)
    assert json.loads(watcher.on("edge_inspector/report/shift")[1])["defects"] == 0
    watcher.close()
