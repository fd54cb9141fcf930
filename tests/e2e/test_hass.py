"""A real `hass` process loads the integration from this working tree (scripts/hass.py): the UI's
own REST config flows create a camera, the hub and a station, and the station's entities get
states from YOLO running inside Home Assistant."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.ha_release import BLOCKING_CALL, DEPRECATED_USE, station_object_id
from tests.hass_script import run_hass_script

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_home_assistant_shows_the_station(tmp_path: Path) -> None:
    proc = run_hass_script(
        ["--config", str(tmp_path / "hass"), "--port", str(_free_port())], timeout=400
    )
    log = (tmp_path / "hass" / "hass-run.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-3000:]
    # nothing of ours that this release deprecates ("Detected that custom integration ...")
    assert not DEPRECATED_USE.search(log), log
    # nothing blocking in the event loop: the engine's imports, files and models off it
    assert not BLOCKING_CALL.search(log), "\n".join(BLOCKING_CALL.findall(log))
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.startswith("  "))
    press = station_object_id("Press", area="Line 2")
    assert lines[f"binary_sensor.{press}_defect"].strip() == "on"
    assert int(lines[f"sensor.{press}_inspections"].split()[0]) >= 1
    assert lines[f"switch.{press}_inspection"].strip() == "on"
    assert f"sensor.{press}_defect_rate" in lines
