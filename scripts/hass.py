"""Start a real Home Assistant with this working tree's integration and a demo station.

    .venv/bin/python scripts/hass.py [--config var/hass] [--port 8123] [--keep-running]
        [--frontend] [--ollama URL] [--mode continuous|triggered]
        [--python PYTHON] [--integration-zip ZIP --index URL] [--engine URL --engine-token T]

Creates the configuration folder (http, api and config integrations; with --frontend also the
frontend and the Edge Inspector dashboard from dashboards/edge-inspector.yaml), links
`custom_components/edge_inspector` from the working tree, adds a user, starts `hass`, then sets
up, through the same REST config flows the UI uses, a `local_file` camera showing a synthetic
frame with a defect, the Edge Inspector hub and one station on that camera. It prints the
station's entities and their states; with --keep-running it leaves Home Assistant running
(Ctrl-C or SIGTERM stops it, and `hass` with it). Login: user `admin`, password `edge-inspector`.

As HACS installs it: `--integration-zip` unpacks the release zip into `custom_components`
instead of linking the working tree, and `--index` starts `hass` without `--skip-pip` and without
this checkout on its path, so Home Assistant installs the manifest's requirement itself from that
package index (`--python` names the interpreter of the environment it installs into). With
`--engine`, the hub connects to an engine service (remote mode) and its stations come from there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "admin", "edge-inspector"


def _request(url: str, data: Any = None, token: str | None = None, form: bool = False) -> Any:
    headers = {}
    body = None
    if data is not None:
        if form:
            body = urllib.parse.urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read() or b"null")


def prepare(
    config: Path, port: int, frontend: bool = False, integration_zip: Path | None = None
) -> None:
    config.mkdir(parents=True, exist_ok=True)
    extra = ""
    if frontend:
        import shutil

        (config / "dashboards").mkdir(exist_ok=True)
        for name in ("edge-inspector.yaml", "edge-inspector-builtin.yaml"):
            shutil.copy(ROOT / "dashboards" / name, config / "dashboards" / name)
        from homeassistant.const import MAJOR_VERSION, MINOR_VERSION

        if (MAJOR_VERSION, MINOR_VERSION) < (2026, 9):  # no area in new entity ids yet
            builtin = config / "dashboards" / "edge-inspector-builtin.yaml"
            builtin.write_text(builtin.read_text().replace(".line_2_press_", ".press_"))
        extra = (
            "frontend:\nhistory:\nlovelace:\n  dashboards:\n"
            "    edge-inspector:\n      mode: yaml\n"
            "      filename: dashboards/edge-inspector.yaml\n"
            "      title: Edge Inspector\n      icon: mdi:magnify-scan\n"
            "      show_in_sidebar: true\n"
            "    edge-inspector-builtin:\n      mode: yaml\n"
            "      filename: dashboards/edge-inspector-builtin.yaml\n"
            "      title: Inspection (built-in cards)\n      show_in_sidebar: true\n"
        )
    (config / "configuration.yaml").write_text(
        "homeassistant:\n  name: Edge Inspector demo\n  time_zone: UTC\n  unit_system: metric\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {port}\n"
        "api:\nconfig:\n" + extra + "logger:\n  default: warning\n  logs:\n"
        "    homeassistant.util.package: info\n"  # the requirement installs (HACS test)
        "    custom_components.edge_inspector: info\n    edge_inspector: info\n"
    )
    storage = config / ".storage"
    storage.mkdir(exist_ok=True)
    if not (storage / "onboarding").exists():
        # Onboarding's other steps marked done: only the owner is made (by `login`), and the
        # UI opens dashboards, not the wizard. (Its core_config step would also add default
        # integrations, weather and text-to-speech, that need packages we do not install.)
        (storage / "onboarding").write_text(
            json.dumps(
                {
                    "version": 4,
                    "minor_version": 1,
                    "key": "onboarding",
                    "data": {"done": ["core_config", "analytics", "integration"]},
                }
            )
        )
    components = config / "custom_components"
    components.mkdir(exist_ok=True)
    target = components / "edge_inspector"
    if integration_zip is not None:
        if not target.exists():  # as HACS does with a zip_release: unpacked into its folder
            with zipfile.ZipFile(integration_zip) as archive:
                archive.extractall(target)
    elif not target.exists():
        target.symlink_to(ROOT / "custom_components" / "edge_inspector")
    image = config / "press-camera.jpg"
    if not image.exists():
        import cv2
        import numpy as np

        from edge_inspector.demo.synthetic import random_scene

        rng = np.random.default_rng(3)
        while not (scene := random_scene(rng, defect_rate=1.0)).truths:
            pass
        cv2.imwrite(str(image), scene.image)


def login(base: str) -> str:
    """A token: from onboarding on the first run (it creates the owner), later by logging in."""
    client = f"{base}/"
    try:
        done = _request(
            f"{base}/api/onboarding/users",
            {
                "client_id": client,
                "name": "Admin",
                "username": USER,
                "password": PASSWORD,
                "language": "en",
            },
        )
        code = done["auth_code"]
    except urllib.error.HTTPError as exc:
        if exc.code != 403:  # 403: the owner exists already
            raise
        code = None
    if code is not None:
        token = _request(
            f"{base}/auth/token",
            {"grant_type": "authorization_code", "code": code, "client_id": client},
            form=True,
        )
        return str(token["access_token"])
    flow = _request(
        f"{base}/auth/login_flow",
        {"client_id": client, "handler": ["homeassistant", None], "redirect_uri": client},
    )
    done = _request(
        f"{base}/auth/login_flow/{flow['flow_id']}",
        {"client_id": client, "username": USER, "password": PASSWORD},
    )
    token = _request(
        f"{base}/auth/token",
        {"grant_type": "authorization_code", "code": done["result"], "client_id": client},
        form=True,
    )
    return str(token["access_token"])


def flow(base: str, token: str, path: str, start: dict[str, Any], data: dict[str, Any]) -> Any:
    """A config flow through the UI's REST API, answering only the fields its form asks for
    (forms differ between releases: `local_file` stopped asking for a name in 2026.3)."""
    step = _request(f"{base}/api/config/config_entries/{path}", start, token)
    if step.get("type") == "abort":
        return step
    fields = {field["name"] for field in step.get("data_schema", [])}
    answer = {key: value for key, value in data.items() if key in fields}
    return _request(f"{base}/api/config/config_entries/{path}/{step['flow_id']}", answer, token)


def set_up(
    base: str,
    token: str,
    config: Path,
    *,
    ollama: str | None = None,
    mode: str = "continuous",
    engine: tuple[str, str] | None = None,
) -> None:
    entries = _request(f"{base}/api/config/config_entries/entry", token=token)
    domains = {e["domain"]: e for e in entries}
    if "local_file" not in domains:
        flow(
            base,
            token,
            "flow",
            {"handler": "local_file"},
            {"name": "Press camera", "file_path": str(config / "press-camera.jpg")},
        )
    if "edge_inspector" not in domains:
        hub_data = {"ollama_url": ollama, "ollama_model": "qwen2.5vl:7b"} if ollama else {}
        if engine is not None:
            hub_data = {"engine_url": engine[0], "engine_token": engine[1]}
        result = flow(base, token, "flow", {"handler": "edge_inspector"}, hub_data)
        if result.get("type") != "create_entry":
            raise SystemExit(f"the hub's flow did not finish: {result}")
        entries = _request(f"{base}/api/config/config_entries/entry", token=token)
        domains = {e["domain"]: e for e in entries}
    hub = domains["edge_inspector"]
    if engine is None and not hub.get("num_subentries"):
        result = flow(
            base,
            token,
            "subentries/flow",
            {"handler": [hub["entry_id"], "station"]},
            {
                "name": "Press",
                "camera_entity_id": "camera.press_camera",
                "model_path": "demo",
                "defects": "scratch, dent, crack, spot",
                "threshold": 0.4,
                "interval": 2,
                "mode": mode,
                "imgsz": 320,
                "line": "Line 2",
            },
        )
        if result.get("type") != "create_entry":
            raise SystemExit(f"the station flow did not finish: {result}")


def our_states(base: str, token: str) -> list[dict[str, Any]]:
    """The states of the integration's entities (whatever ids this release gave them)."""
    ids = _request(
        f"{base}/api/template",
        {"template": "{{ integration_entities('edge_inspector') | list | tojson }}"},
        token,
    )
    wanted = set(json.loads(ids) if isinstance(ids, str) else ids)
    return [s for s in _request(f"{base}/api/states", token=token) if s["entity_id"] in wanted]


def entity_id_pattern(domain: str, station: str, suffix: str) -> re.Pattern[str]:
    """A station entity's id on any release: `binary_sensor.press_defect`, or with the area
    first where the device has one (2026.9+ by default): `binary_sensor.line_2_press_defect`."""
    return re.compile(rf"{domain}\.(?:[a-z0-9_]+_)?{station}_{suffix}")


def _entity(
    states: list[dict[str, Any]], domain: str, station: str, suffix: str
) -> dict[str, Any] | None:
    pattern = entity_id_pattern(domain, station, suffix)
    return next((s for s in states if pattern.fullmatch(s["entity_id"])), None)


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "var" / "hass")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--keep-running", action="store_true")
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--frontend", action="store_true", help="the UI and the dashboards too")
    parser.add_argument("--ollama", help="an Ollama server for incident reports")
    parser.add_argument("--mode", choices=("continuous", "triggered"), default="continuous")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run hass")
    parser.add_argument("--integration-zip", type=Path, help="install the integration from it")
    parser.add_argument("--index", help="let hass install requirements from this package index")
    parser.add_argument("--engine", help="remote mode: the engine service's URL")
    parser.add_argument("--engine-token", default="", help="remote mode: its API token")
    parser.add_argument("--station", default="press", help="the station's id part to wait for")
    return parser


def _wait_for_hass(base: str, proc: subprocess.Popen[bytes], config: Path, deadline: float) -> None:
    """Until `hass` answers HTTP (SystemExit if it ends or the deadline passes)."""
    while True:
        try:
            _request(f"{base}/api/onboarding")
            return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                log_file = config / "hass-run.log"
                raise SystemExit(f"Home Assistant did not start; see {log_file}") from None
            time.sleep(1)


def _wait_for_station(
    base: str, token: str, station: str, mode: str, deadline: float
) -> list[dict[str, Any]]:
    """Our entities once the station has inspected (pressing "inspect now" for a triggered
    one); SystemExit at the deadline."""
    while True:
        ours = [s for s in our_states(base, token) if not s["entity_id"].startswith("camera.")]
        inspected = _entity(ours, "sensor", station, "inspections")
        button = _entity(ours, "button", station, "inspect_now")
        if mode == "triggered" and button and inspected and inspected["state"] == "0":
            # a triggered station inspects on request: one now, so there is a defect
            _request(f"{base}/api/services/button/press", {"entity_id": button["entity_id"]}, token)
        if inspected and inspected["state"] not in ("unknown", "unavailable", "0"):
            return ours
        if time.monotonic() > deadline:
            raise SystemExit("the station's entities did not get states in time")
        time.sleep(1)


def main() -> int:
    args = _arguments().parse_args()
    config = args.config.resolve()
    prepare(config, args.port, args.frontend, args.integration_zip)
    base = f"http://127.0.0.1:{args.port}"
    command = [args.python, "-m", "homeassistant", "-c", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.index:
        # Home Assistant installs requirements with `uv pip install` into its environment.
        # Nothing of this shell's environments either: `uv` would install into an activated one.
        unset = {"PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX"}
        env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("UV_")}
        env |= {"UV_DEFAULT_INDEX": args.index, "UV_CACHE_DIR": str(config / ".uv-cache")}
    else:
        command.append("--skip-pip")

    def stop(signum: int, _frame: object) -> None:
        # Stopping this script stops the hass it started (SystemExit runs the `finally`); once
        # is enough, a second signal must not cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log = open(config / "hass-run.log", "w")  # noqa: SIM115
    # From the configuration folder, as a service runs it: `python -m` puts the working folder
    # first on the path, and this checkout must not be importable unless PYTHONPATH says so.
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=config)

    try:
        deadline = time.monotonic() + args.timeout
        _wait_for_hass(base, proc, config, deadline)
        token = login(base)
        engine = (args.engine, args.engine_token) if args.engine else None
        set_up(base, token, config, ollama=args.ollama, mode=args.mode, engine=engine)
        ours = _wait_for_station(base, token, args.station, args.mode, deadline)
        print(f"Home Assistant at {base} (user {USER}, password {PASSWORD}); config {config}")
        for state in sorted(ours, key=lambda s: s["entity_id"]):
            unit = state["attributes"].get("unit_of_measurement", "")
            print(f"  {state['entity_id']:<42} {state['state']} {unit}".rstrip(), flush=True)
        if args.keep_running:
            print("running; Ctrl-C stops it", flush=True)
            proc.wait()
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


if __name__ == "__main__":
    raise SystemExit(main())
