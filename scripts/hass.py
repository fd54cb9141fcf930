"""Start a real Home Assistant with this working tree's integration and a demo station.

    .venv/bin/python scripts/hass.py [--config var/hass] [--port 8123] [--keep-running]
        [--frontend] [--ollama URL] [--mode continuous|triggered]

Creates the configuration folder (http, api and config integrations; with --frontend also the
frontend and the Edge Inspector dashboard from dashboards/edge-inspector.yaml), links
`custom_components/edge_inspector` from the working tree, adds a user, starts `hass`, then sets
up, through the same REST config flows the UI uses, a `local_file` camera showing a synthetic
frame with a defect, the Edge Inspector hub and one station on that camera. It prints the
station's entities and their states; with --keep-running it leaves Home Assistant running
(Ctrl-C stops it). Login: user `admin`, password `edge-inspector`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
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


def prepare(config: Path, port: int, frontend: bool = False) -> None:
    config.mkdir(parents=True, exist_ok=True)
    extra = ""
    if frontend:
        import shutil

        (config / "dashboards").mkdir(exist_ok=True)
        for name in ("edge-inspector.yaml", "edge-inspector-builtin.yaml"):
            shutil.copy(ROOT / "dashboards" / name, config / "dashboards" / name)
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
    link = components / "edge_inspector"
    if not link.exists():
        link.symlink_to(ROOT / "custom_components" / "edge_inspector")
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
    step = _request(f"{base}/api/config/config_entries/{path}", start, token)
    if step.get("type") == "abort":
        return step
    return _request(f"{base}/api/config/config_entries/{path}/{step['flow_id']}", data, token)


def set_up(
    base: str, token: str, config: Path, ollama: str | None = None, mode: str = "continuous"
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
        flow(base, token, "flow", {"handler": "edge_inspector"}, hub_data)
        entries = _request(f"{base}/api/config/config_entries/entry", token=token)
        domains = {e["domain"]: e for e in entries}
    hub = domains["edge_inspector"]
    if not hub.get("num_subentries"):
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


def main() -> int:
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
    args = parser.parse_args()
    config = args.config.resolve()
    prepare(config, args.port, args.frontend)
    base = f"http://127.0.0.1:{args.port}"
    log = open(config / "hass-run.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "homeassistant", "-c", str(config), "--skip-pip"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                _request(f"{base}/api/onboarding")
                break
            except urllib.error.HTTPError:
                break  # it answers
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_file = config / "hass-run.log"
                    raise SystemExit(f"Home Assistant did not start; see {log_file}") from None
                time.sleep(1)
        token = login(base)
        set_up(base, token, config, args.ollama, args.mode)
        while True:
            states = _request(f"{base}/api/states", token=token)
            ours = [
                s
                for s in states
                if s["entity_id"].split(".", 1)[1].startswith("press_")
                and not s["entity_id"].startswith("camera.")
            ]
            inspected = next(
                (s for s in ours if s["entity_id"] == "sensor.press_inspections"), None
            )
            button = next((s for s in ours if s["entity_id"] == "button.press_inspect_now"), None)
            if args.mode == "triggered" and button and inspected and inspected["state"] == "0":
                # a triggered station inspects on request: one now, so there is a defect
                _request(
                    f"{base}/api/services/button/press",
                    {"entity_id": "button.press_inspect_now"},
                    token,
                )
            if inspected and inspected["state"] not in ("unknown", "unavailable", "0"):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the station's entities did not get states in time")
            time.sleep(1)
        print(f"Home Assistant at {base} (user {USER}, password {PASSWORD}); config {config}")
        for state in sorted(ours, key=lambda s: s["entity_id"]):
            unit = state["attributes"].get("unit_of_measurement", "")
            print(f"  {state['entity_id']:<42} {state['state']} {unit}".rstrip())
        if args.keep_running:
            print("running; Ctrl-C stops it")
            proc.wait()
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


if __name__ == "__main__":
    raise SystemExit(main())
