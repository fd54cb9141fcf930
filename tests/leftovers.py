"""Nothing a test starts outlives the test run: every process started during the run inherits a
marker in its environment (`EDGE_INSPECTOR_TEST_RUN`); when the run ends, any process still
carrying it (a service, a broker, a browser, a `hass`, however deep in the tree) is listed,
killed, and fails the run. Read from /proc (Linux); elsewhere the check is skipped."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

MARKER = "EDGE_INSPECTOR_TEST_RUN"
GRACE_S = 15.0  # what a process told to stop at the end of the last test may still need


def _carriers(run: str) -> dict[int, str]:
    """The processes (but this one) whose environment has this run's marker: pid -> command."""
    wanted = f"{MARKER}={run}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if command:  # a zombie has none: it has ended, its parent just has not reaped it
            found[int(entry.name)] = command.strip()[:200]
    return found


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(MARKER, uuid.uuid4().hex)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not Path("/proc/self/environ").exists():
        return
    run = os.environ[MARKER]
    deadline = time.monotonic() + GRACE_S
    while (left := _carriers(run)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not left:
        return
    for pid in left:
        with contextlib.suppress(OSError):  # it ended after all
            os.kill(pid, signal.SIGKILL)
    lines = "\n".join(f"  {pid}: {command}" for pid, command in sorted(left.items()))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"processes started by the tests outlived them (killed now):\n{lines}"
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
