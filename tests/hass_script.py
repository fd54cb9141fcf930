"""scripts/hass.py as the tests run it: a child process that never outlives the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "hass.py"


def run_hass_script(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run it to the end; past the timeout it gets SIGTERM (on which it stops the `hass` it
    started), then SIGKILL, and the test fails with what it printed."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"hass.py did not finish in {timeout:.0f} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
