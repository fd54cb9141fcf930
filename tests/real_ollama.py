"""A real Ollama server with real models, for the tests that put a real model in the loop.

`scripts/real-ollama.sh install` (run by the set-up) leaves the server binary and the two Qwen2.5
models in the cache; `RealOllama` starts that server on a free loopback port, creates the models
in it if needed, and ends it. With REAL_OLLAMA_HOST set, the tests use that server instead (one
you started with `scripts/real-ollama.sh serve`, or a GPU box's).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CACHE = (
    Path(os.environ.get("EDGE_INSPECTOR_CACHE", Path.home() / ".cache" / "edge-inspector"))
    / "real-ollama"
)
MODEL = "qwen2.5-coder:1.5b"  # calls tools, follows JSON schemas; no vision
SMALL_MODEL = "qwen2.5-coder:0.5b"
MODELS = (MODEL, SMALL_MODEL)


def installed() -> bool:
    return (CACHE / ".installed").is_file() and (CACHE / "libs" / "ollama-lib").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            data = json.loads(answer.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RealOllama:
    """`with RealOllama() as server:` ... `server.url`."""

    def __init__(self) -> None:
        self.url = os.environ.get("REAL_OLLAMA_HOST", "")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def __enter__(self) -> RealOllama:
        if self.url:
            return self
        if not installed():
            raise RuntimeError(f"no real Ollama in {CACHE}: run `scripts/real-ollama.sh install`")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": str(CACHE / "libs"),
            "OLLAMA_NUM_GPU": "0",
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(CACHE / "models"),
            "OLLAMA_NUM_PARALLEL": "1",
            "OLLAMA_MAX_LOADED_MODELS": "2",
            "HOME": str(CACHE),
        }
        self._log = CACHE / f"serve-{port}.log"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [str(CACHE / "libs" / "ollama-lib"), "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while _get(f"{self.url}/api/version") is None:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the real Ollama did not start; see {self._log}")
            time.sleep(0.1)
        tags = _get(f"{self.url}/api/tags") or {}
        have = {m.get("name") for m in tags.get("models", []) if isinstance(m, dict)}  # type: ignore[union-attr]
        for model in MODELS:
            if model not in have:
                modelfile = CACHE / f"{model.replace(':', '-')}.Modelfile"
                subprocess.run(
                    [str(CACHE / "libs" / "ollama-lib"), "create", model, "-f", str(modelfile)],
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=600,
                )
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # the server and the model runners it started: one process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a runner that outlived the server
        if self._log is not None:
            self._log.unlink(missing_ok=True)


def main() -> int:
    """Serve for a whole test run (scripts/test.sh): print the URL, then keep the server until
    standard input closes or a signal comes, so every suite reuses one server and its cache."""
    if not installed():
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with RealOllama() as server:
        print(server.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
