"""Property-based fuzzing of `edge-inspector run` as a hostile client would: every operation of
the committed OpenAPI document with generated valid and invalid requests (schemathesis), and the
MQTT command topics with generated payloads (hypothesis), against a real service with a token,
a camera station, a push station and a real Mosquitto.

Nothing a client sends may get a 5xx, leave a traceback in the log, or go unanswered."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.engine import events, from_schema

from edge_inspector.commands import InputError, SetCommand, parse_command, parse_object
from tests.mosquitto import Mosquitto, Watcher
from tests.service import TOKEN, Service, running_service

OPENAPI = Path(__file__).parents[2] / "edge_inspector" / "api" / "openapi.json"
STATIONS = ("line_a", "dock")
DEFECTS = ("scratch", "dent", "crack", "spot")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Mosquitto]]:
    folder = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(folder / "mosquitto")
    broker.start()
    try:
        with running_service(folder, extra=f"mqtt: {{url: '{broker.url}'}}") as service:
            yield service, broker
            log = service.log.read_text(errors="replace") if service.log else ""
            assert "Traceback" not in log, log[-4000:]
    finally:
        broker.stop()


def test_no_request_the_api_describes_gets_a_server_error(
    target: tuple[Service, Mosquitto],
) -> None:
    service, _ = target
    schema = schemathesis.openapi.from_path(OPENAPI)
    # the live view never ends: a stream, not a request to fuzz (it has its own tests)
    schema = schema.exclude(path_regex=r"stream\.mjpeg$")
    config = schema.config
    config.update(
        base_url=service.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        workers=1,
        request_timeout=30,
    )
    config.generation.update(
        max_examples=80,
        database="none",
        deterministic=True,
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    )
    config.checks.update(included_check_names=["not_a_server_error"])
    config.phases.update(phases=["examples", "coverage", "fuzzing"])
    config.seed = 16
    requests = 0
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for interaction in event.recorder.interactions.values():
                requests += 1
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
            for checks in event.recorder.checks.values():
                failures += [
                    f"{event.label}: {c.name}: {c.failure_info.failure.title}"
                    for c in checks
                    if c.failure_info
                ]
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.value}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    print(f"\nHTTP fuzzing: {requests} requests, statuses {dict(sorted(statuses.items()))}")
    assert requests > 500
    assert not failures, "\n".join(failures[:20])
    assert not [s for s in statuses if s >= 500]


# -- MQTT -----------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "enabled": _json,
        "threshold": _json | st.floats(0, 1.5),
        "thresholds": st.dictionaries(st.sampled_from([*DEFECTS, "rust"]), _json | st.floats(0, 1)),
        "part_id": _json,
        "incident_id": _json,
        "request_id": _json,
        "approve": _json,
        "by": _json,
    },
)
_valid_set = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.booleans(),
        "threshold": st.floats(0.01, 1),
        "thresholds": st.dictionaries(st.sampled_from(DEFECTS), st.floats(0.01, 1), max_size=2),
    },
)
_payloads = st.one_of(
    _valid_set.map(lambda d: json.dumps(d).encode()),
    _fields.map(lambda d: json.dumps(d).encode()),
    _json.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
)


def _expected_refusal(station: str, command: str, raw: bytes) -> bool:
    """What the service must do with a command: refuse it (True) or carry it out (False)."""
    if station not in STATIONS:
        return True
    try:
        data = parse_object(raw, max_bytes=4096)
        if command != "set":
            return True  # no such incident to confirm; the fuzzing inspects only the push station
        command_ = parse_command(SetCommand, data)
    except InputError:
        return True
    return bool(set(command_.thresholds or {}) - set(DEFECTS))


def _station(service: Service, station: str) -> dict[str, Any]:
    status, body, _ = service.get(f"/api/stations/{station}")
    assert status == 200
    result: dict[str, Any] = json.loads(body)
    return result


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    station=st.sampled_from([*STATIONS, "LINE_A", "nosuch"]),
    command=st.sampled_from(["set", "confirm", "inspect"]),
    raw=_payloads,
)
@example(station="dock", command="set", raw=b"[" * 2000 + b"]" * 2000)
@example(station="dock", command="set", raw=b'{"threshold": ' + b"9" * 4000 + b"}")
@example(station="dock", command="set", raw=b'{"threshold": "0.5"}')
@example(station="dock", command="set", raw=b'{"threshold": true}')
@example(station="dock", command="set", raw=b'{"enabled": "off"}')
@example(station="line_a", command="set", raw=b'{"enabled": 1}')
@example(station="line_a", command="set", raw=b'{"threshold": 0}')
@example(station="LINE_A", command="inspect", raw=b"")
@example(station="dock", command="inspect", raw=b"{}")
@example(station="dock", command="set", raw=b'{"threshold": 0.3}')
def test_every_mqtt_command_is_carried_out_or_answered(
    target: tuple[Service, Mosquitto], station: str, command: str, raw: bytes
) -> None:
    service, broker = target
    if command == "inspect" and station == "line_a":
        command = "set"  # inspecting the camera station is the burst test's
    watcher = _watcher(broker)
    topic = f"edge_inspector/{station}/error"
    before = len(watcher.on(topic))
    watcher.client.publish(f"edge_inspector/{station}/{command}", raw, qos=1)
    if _expected_refusal(station, command, raw):
        watcher.wait(lambda: len(watcher.on(topic)) > before, timeout=30)
        reply = json.loads(watcher.on(topic)[before])
        assert reply["command"] == command
        assert reply["payload"] == raw[:500].decode("utf-8", "replace")
        _COUNTS["refused"] += 1
        return
    wanted = parse_command(SetCommand, parse_object(raw))
    deadline = time.monotonic() + 30
    while True:  # carried out: the station's state says so
        state = _station(service, station)
        thresholds = {**dict.fromkeys(DEFECTS, wanted.threshold), **(wanted.thresholds or {})}
        if (wanted.enabled is None or state["enabled"] == wanted.enabled) and all(
            value is None or abs(state["thresholds"][name] - value) < 1e-9
            for name, value in thresholds.items()
        ):
            break
        assert time.monotonic() < deadline, f"{raw!r} was neither refused nor carried out"
        time.sleep(0.05)
    assert len(watcher.on(topic)) == before  # and not refused as well
    _COUNTS["carried out"] += 1


_COUNTS: Counter[str] = Counter()
_WATCHERS: dict[int, Watcher] = {}


def _watcher(broker: Mosquitto) -> Watcher:
    if broker.port not in _WATCHERS:
        for old in _WATCHERS.values():
            old.close()
        _WATCHERS.clear()
        _WATCHERS[broker.port] = Watcher(
            broker.port, "edge_inspector/+/error", client_id="fuzz-watcher"
        )
    return _WATCHERS[broker.port]


@pytest.fixture(scope="module", autouse=True)
def _close_watchers() -> Iterator[None]:
    yield
    for watcher in _WATCHERS.values():
        watcher.close()
    _WATCHERS.clear()
    if _COUNTS:
        print(f"\nMQTT fuzzing: {dict(_COUNTS)} commands, none unanswered")
