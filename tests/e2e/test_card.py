"""The dashboard card in a real browser: a real `hass` with the frontend and the integration
(scripts/hass.py --frontend), a triggered demo station on a camera showing a defect, Ollama's
API served by the fake model for the incident report, and headless Chromium driven by
Playwright (tests/e2e/card.cjs) that logs in through the login form, opens the Edge Inspector
dashboard, checks the card, presses "Inspect now" and saves screenshots in light and dark.

Screenshots: var/test-output/card/{card-light,card-after-inspect,card-dark,builtin-light}.png
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.ha_release import station_object_id

PRESS = station_object_id("Press", area="Line 2")  # its entities' id prefix

ROOT = Path(__file__).parents[2]
OUT = ROOT / "var" / "test-output" / "card"
CACHE = Path(
    os.environ.get("EDGE_INSPECTOR_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-inspector"
)
NODE_MODULES = CACHE / "browser" / "node_modules"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dark(rgb: str) -> bool:
    values = [int(v) for v in rgb.removeprefix("rgb(").removesuffix(")").split(",")[:3]]
    return sum(values) < 3 * 96


def _run_browser(base: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is needed for the browser test (scripts/setup.sh installs it)"
    assert (NODE_MODULES / "playwright-core").is_dir(), "run scripts/setup.sh (playwright-core)"
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "run scripts/setup.sh (Debian's chromium)"
    if OUT.exists():
        shutil.rmtree(OUT)
    proc = subprocess.run(
        [node, str(ROOT / "tests" / "e2e" / "card.cjs"), base, str(OUT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES), "CHROMIUM": chromium},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_the_card_in_a_real_browser(tmp_path: Path) -> None:
    ollama = subprocess.Popen(
        [sys.executable, "-m", "tests.ollama_server"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    hass: subprocess.Popen[str] | None = None
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "hass"
    try:
        assert ollama.stdout is not None
        ollama_url = ollama.stdout.readline().strip()
        assert ollama_url.startswith("http://127.0.0.1:"), ollama_url
        hass = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "hass.py"),
                "--config",
                str(config),
                "--port",
                str(port),
                "--frontend",
                "--ollama",
                ollama_url,
                "--mode",
                "triggered",
                "--keep-running",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert hass.stdout is not None
        deadline = time.monotonic() + 400
        seen = []
        for line in hass.stdout:
            seen.append(line)
            if line.startswith("running;"):
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            log = (config / "hass-run.log").read_text()[-3000:]
            raise AssertionError("hass.py ended: " + "".join(seen) + log)

        result = _run_browser(base)
        assert result["ok"], result.get("error")
        before, after, dark = result["before"], result["after"], result["dark"]

        # the card: the annotated picture loaded, the counters, the chart, the model's report
        assert f"/api/image_proxy/image.{PRESS}_last_defect" in before["image"]["src"]
        assert (before["image"]["width"], before["image"]["height"]) == (640, 480)
        assert before["title"] == "Press" and before["status"] == "running"
        inspected = int(before["counters"]["inspections"])
        assert inspected >= 1 and int(before["counters"]["failed"]) >= 1
        assert before["counters"]["rate"].endswith("%")
        # the yield is the engine's figure, shown as it comes (100 - rate, to the decimal)
        rate, yield_ = (float(before["counters"][k].split()[0]) for k in ("rate", "yield"))
        assert abs(rate + yield_ - 100) <= 0.1
        assert before["bars"] == 33  # 8 hours in 15-minute buckets, the current one too
        assert max(before["barHeights"]) > 0
        assert before["report"] == "medium scratch found"  # what the fake model wrote
        assert before["reportTitle"].endswith("on Press")
        # the model's verdict on the detector's call (the fake model always says scratch)
        expected = (
            ("confirmed", "Model confirms: scratch")
            if before["reportTitle"].startswith("scratch on ")
            else ("reclassified", "Model says: scratch")
        )
        assert (before["verdict"], before["verdictText"]) == expected

        # inspect now: the counter changes (the station is triggered: nothing else inspects)
        assert result["clicked"] is True
        assert int(after["counters"]["inspections"]) == inspected + 1

        # acknowledge: the latest incident's state changes and the button is spent
        assert after["reportMeta"].endswith("open") and after["ackEnabled"] is True
        assert result["acknowledged"]["reportMeta"].endswith("acknowledged")
        assert result["acknowledged"]["ackEnabled"] is False

        # the theme: light, then dark when the browser prefers it
        assert not _dark(before["background"]) and _dark(dark["background"])
        assert _dark(before["textColor"]) and not _dark(dark["textColor"])

        # the visual editor lists the station and turns a choice into the card's options
        editor = result["editor"]
        assert editor["fields"][:3] == ["station_id", "title", "hours"]
        (option,) = editor["options"]
        assert option["label"] == "Press (Line 2)" and option["value"].startswith("s_")
        assert editor["changed"]["station_id"] == option["value"]
        assert editor["stub"] == {"station_id": option["value"]}

        # the fallback dashboard of built-in cards renders its cards
        assert {
            "hui-picture-entity-card",
            "hui-tile-card",
            "hui-markdown-card",
            "hui-history-graph-card",
        } <= set(result["builtin_cards"])

        for name in ("card-light", "card-after-inspect", "card-dark", "builtin-light"):
            shot = OUT / f"{name}.png"
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
            assert shot.stat().st_size > 20_000, shot
    finally:
        for proc in (hass, ollama):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
