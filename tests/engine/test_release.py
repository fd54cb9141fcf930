"""The release: one version everywhere, and the artefacts users install."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_inspector import __version__

ROOT = Path(__file__).resolve().parents[2]
RELEASE = [sys.executable, str(ROOT / "scripts" / "release.py")]


def test_the_version_is_written_once_and_everything_agrees() -> None:
    manifest = json.loads((ROOT / "custom_components/edge_inspector/manifest.json").read_text())
    assert manifest["version"] == __version__
    assert manifest["requirements"] == [f"edge-inspector=={__version__}"]
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
    out = subprocess.run(
        [*RELEASE, "check", "--tag", f"v{__version__}"], capture_output=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == __version__


def test_a_tag_that_is_not_the_version_is_refused() -> None:
    out = subprocess.run(
        [*RELEASE, "check", "--tag", "v9.9.9"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 1
    assert f"the tag 'v9.9.9' is not v{__version__}" in out.stderr


def test_the_changelog_has_a_section_for_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M)


def test_the_license_is_the_agpl() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "GNU AFFERO GENERAL PUBLIC LICENSE" in text and "Version 3, 19 November 2007" in text


@pytest.mark.slow
def test_build_writes_the_distributions_and_the_hacs_zip(tmp_path: Path) -> None:
    out = subprocess.run(
        [*RELEASE, "build", "--out", str(tmp_path), "--no-isolation"],
        capture_output=True,
        text=True,
        check=True,
    )
    built = {Path(line).name for line in out.stdout.split()}
    assert built == {
        f"edge_inspector-{__version__}.tar.gz",
        f"edge_inspector-{__version__}-py3-none-any.whl",
        "edge_inspector.zip",
    }
    hacs = json.loads((ROOT / "hacs.json").read_text())
    assert hacs["zip_release"] is True and hacs["filename"] == "edge_inspector.zip"
    with zipfile.ZipFile(tmp_path / "edge_inspector.zip") as archive:
        names = set(archive.namelist())
    assert {"manifest.json", "__init__.py", "translations/en.json", "brand/icon.png"} <= names
    assert not any("__pycache__" in name for name in names)
    with zipfile.ZipFile(tmp_path / f"edge_inspector-{__version__}-py3-none-any.whl") as wheel:
        files = set(wheel.namelist())
        metadata = wheel.read(f"edge_inspector-{__version__}.dist-info/METADATA").decode()
    assert "edge_inspector/demo/model/demo-defects.pt" in files
    assert "edge_inspector/api/openapi.json" in files
    assert not any(name.startswith(("custom_components/", "tests/")) for name in files)
    assert f"Version: {__version__}" in metadata
    assert "License-Expression: AGPL-3.0-or-later" in metadata
