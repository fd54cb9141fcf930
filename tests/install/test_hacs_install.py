"""Installed as HACS installs it, and set up as a user sets it up.

The release zip (built by scripts/release.py, as the release workflow builds it) is unpacked into
a fresh configuration's `custom_components`; a real `hass` runs in an environment that has Home
Assistant but no Edge Inspector (a copy of the one scripts/setup.sh prepares: .hacs-env), starts
WITHOUT `--skip-pip`, and Home Assistant itself installs the manifest's requirement, with its own
`uv pip install` and its own constraints, from a package index served on loopback that holds the
built wheel and only what it needs beyond Home Assistant's packages. Then the UI's config flows
make a hub and a station, and the station's entities get states: in remote mode on the light core
alone (no PyTorch in the environment), and in-process where the engine runtime is installed.
"""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge_inspector import __version__
from tests.ha_release import DEPRECATED_USE, station_object_id
from tests.hass_script import run_hass_script
from tests.service import free_port, running_service

ROOT = Path(__file__).resolve().parents[2]
HACS_ENV = ROOT / ".hacs-env"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _build_index(folder: Path, wheels: list[Path]) -> Path:
    """A PEP 503 simple index of these wheels (with their hashes), as static files."""
    files = folder / "files"
    files.mkdir(parents=True)
    projects: dict[str, list[str]] = {}
    for wheel in wheels:
        shutil.copy(wheel, files / wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        project = _normalize(wheel.name.split("-")[0])
        href = f"../../files/{wheel.name}#sha256={digest}"
        projects.setdefault(project, []).append(
            f'<a href="{html.escape(href)}">{html.escape(wheel.name)}</a>'
        )
    simple = folder / "simple"
    for project, links in projects.items():
        (simple / project).mkdir(parents=True)
        (simple / project / "index.html").write_text(
            "<!DOCTYPE html><html><body>" + "<br>".join(links) + "</body></html>"
        )
    (simple / "index.html").write_text(
        "<!DOCTYPE html><html><body>"
        + "".join(f'<a href="{p}/">{p}</a>' for p in sorted(projects))
        + "</body></html>"
    )
    return folder


@contextmanager
def _serve(folder: Path, log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}/simple/"
    finally:
        server.terminate()
        server.wait(30)


def _environment(folder: Path, engine_runtime: bool) -> Path:
    """A copy of the plain Home Assistant environment (hard links: instant, and installing into
    the copy replaces files rather than writing through them)."""
    venv = folder / "venv"
    subprocess.run(["cp", "-al", str(HACS_ENV / "venv"), str(venv)], check=True)
    assert not list((venv / SITE).glob("edge_inspector*")), "the environment has Edge Inspector"
    if engine_runtime:
        # PyTorch, Ultralytics and the rest of the engine extra, as a user who runs the engine
        # inside Home Assistant installs them: importable after the environment's own packages.
        runtime = (ROOT / ".venv" / SITE).resolve()
        (venv / SITE / "zz-engine-runtime.pth").write_text(f"{runtime}\n")
    return venv


@pytest.fixture(scope="module")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release as the workflow builds it, and the index Home Assistant installs from."""
    assert (HACS_ENV / "venv" / "bin" / "python").exists(), "run scripts/setup.sh: no .hacs-env"
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "release.py"),
            "build",
            "--out",
            str(dist),
            "--no-isolation",
        ],
        check=True,
        capture_output=True,
    )
    wheels = [dist / f"edge_inspector-{__version__}-py3-none-any.whl"]
    wheels += sorted((HACS_ENV / "wheelhouse").glob("*.whl"))
    index = _build_index(tmp_path_factory.mktemp("index"), wheels)
    (index / "zip").mkdir()
    shutil.copy(dist / "edge_inspector.zip", index / "zip" / "edge_inspector.zip")
    return index


def _hass(
    tmp_path: Path, index: Path, venv: Path, station: str, *extra: str
) -> tuple[dict[str, str], str, str]:
    """scripts/hass.py on that environment: (entity id -> state, hass's log, the index's log)."""
    config = tmp_path / "hass"
    with _serve(index, tmp_path / "index.log") as url:
        proc = run_hass_script(
            [
                "--config",
                str(config),
                "--port",
                str(free_port()),
                "--python",
                str(venv / "bin" / "python"),
                "--integration-zip",
                str(index / "zip" / "edge_inspector.zip"),
                "--index",
                url,
                "--station",
                station,
                "--timeout",
                "300",
                *extra,
            ],
            timeout=420,
        )  # hass.py itself runs from the checkout; the hass it starts does not
    log_file = config / "hass-run.log"
    log = log_file.read_text() if log_file.exists() else "(hass did not start)"
    served = (tmp_path / "index.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-4000:] + served[-2000:]
    states = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.startswith("  "))
    return {k: v.strip() for k, v in states.items()}, log, served


def _installed_by_home_assistant(venv: Path, log: str, served: str) -> None:
    # Home Assistant's own installer ran (not us), fetched our wheel from the index...
    assert f"Attempting install of edge-inspector=={__version__}" in log, log[-3000:]
    assert f"GET /files/edge_inspector-{__version__}-py3-none-any.whl" in served, served
    # ...into the environment Home Assistant runs in, not into the checkout's.
    (dist_info,) = (venv / SITE).glob("edge_inspector-*.dist-info")
    assert dist_info.name == f"edge_inspector-{__version__}.dist-info"
    assert (dist_info / "INSTALLER").read_text().strip() == "uv"
    assert "Unable to install package" not in log, log[-3000:]
    ours = re.compile(
        r"^\S+ \S+ (ERROR|CRITICAL) \(\w+\) \[(custom_components\.)?edge_inspector", re.M
    )
    assert not ours.search(log), log[-3000:]
    # nothing of ours that this release deprecates
    assert not DEPRECATED_USE.search(log), log


def test_remote_mode_on_the_light_core(tmp_path: Path, package_index: Path) -> None:
    venv = _environment(tmp_path, engine_runtime=False)
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, check=False
    )
    assert probe.returncode != 0, "PyTorch must not be importable in the light environment"
    (tmp_path / "engine").mkdir()
    with running_service(tmp_path / "engine") as engine:
        states, log, served = _hass(
            tmp_path,
            package_index,
            venv,
            "line_a",
            "--engine",
            engine.url,
            "--engine-token",
            engine.token or "",
        )
    _installed_by_home_assistant(venv, log, served)
    line_a = station_object_id("Line A", area="Line 1")
    assert int(states[f"sensor.{line_a}_inspections"].split()[0]) >= 1
    assert states[f"switch.{line_a}_inspection"] == "on"
    dock = station_object_id("Dock", area="Line 2")
    assert f"button.{dock}_inspect_now" in states  # every station of the engine, one device each
    assert not list((venv / SITE).glob("torch*")), "installing the core pulled in PyTorch"


def test_in_process_where_the_engine_runtime_is_installed(
    tmp_path: Path, package_index: Path
) -> None:
    venv = _environment(tmp_path, engine_runtime=True)
    states, log, served = _hass(tmp_path, package_index, venv, "press")
    _installed_by_home_assistant(venv, log, served)
    press = station_object_id("Press", area="Line 2")
    assert states[f"binary_sensor.{press}_defect"] == "on"
    assert int(states[f"sensor.{press}_inspections"].split()[0]) >= 1
