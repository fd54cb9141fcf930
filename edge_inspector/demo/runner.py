"""`edge-inspector demo`: the synthetic conveyor through the demo model, printed as it happens."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from pathlib import Path
from typing import TextIO

from ..api.server import ApiServer
from ..app import Application, stop_signals, with_http, with_ollama
from ..config import EngineConfig, load_config
from ..engine import Engine
from ..events import Incident, InspectionResult
from ..mqtt import MqttBridge
from ..sinks import EventSink
from . import DEMO_CONFIG

__all__ = ["DemoReporter", "percentile", "run_demo"]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class DemoReporter(EventSink):
    """Prints each incident as it is stored, progress every few seconds, and a summary."""

    def __init__(
        self, out: TextIO, *, frames: int | None = None, progress_every: float = 5.0
    ) -> None:
        self._out = out
        self._target = frames
        self.done = asyncio.Event()
        self._started = time.monotonic()
        self._stopped: float | None = None
        self._progress_every = progress_every
        self._last_progress = self._started
        self.inspections = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.by_class: collections.Counter[str] = collections.Counter()
        self.incidents: list[Incident] = []
        self.enriched: dict[str, Incident] = {}
        self.vlm_waiting: set[str] = set()

    def start_clock(self) -> None:
        """Count time from now: the model is loaded and the stations are running."""
        self._started = self._last_progress = time.monotonic()
        self._stopped = None

    def stop_clock(self) -> None:
        """Detection has stopped (what follows is waiting for the VLM)."""
        self._stopped = time.monotonic()

    def _say(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    async def on_inspection(self, result: InspectionResult) -> None:
        self.inspections += 1
        self.failed += result.verdict == "fail"
        self.latencies.append(result.latency.total_ms)
        if self._target is not None and self.inspections >= self._target:
            self.done.set()
        now = time.monotonic()
        if now - self._last_progress >= self._progress_every:
            self._last_progress = now
            elapsed = now - self._started
            self._say(
                f"{elapsed:6.1f}s  {self.inspections} frames ({self.inspections / elapsed:.1f}/s), "
                f"{len(self.incidents)} defects, "
                f"p50 latency {percentile(self.latencies, 50):.0f} ms"
            )

    async def on_incident(self, incident: Incident) -> None:
        self.incidents.append(incident)
        self.by_class[incident.defect_class] += 1
        if incident.vlm is not None and incident.vlm.status in ("pending", "unavailable"):
            self.vlm_waiting.add(incident.incident_id)  # until an update says it was answered
        track = f" track {incident.track_id}" if incident.track_id is not None else ""
        self._say(
            f"{time.monotonic() - self._started:6.1f}s  DEFECT {incident.defect_class:<8} "
            f"{incident.confidence:.2f}{track}  incident {incident.incident_id[:8]}  "
            f"[{incident.latency_ms:.0f} ms]  {incident.frame_path or ''}"
        )

    async def on_incident_update(self, incident: Incident) -> None:
        vlm = incident.vlm
        if vlm is None:
            return
        head = (
            f"{time.monotonic() - self._started:6.1f}s  VLM    incident {incident.incident_id[:8]}"
        )
        if vlm.status in ("pending", "unavailable"):
            self.vlm_waiting.add(incident.incident_id)
            self._say(f"{head}  {vlm.status}: {vlm.error or ''}")
            return
        self.vlm_waiting.discard(incident.incident_id)
        self.enriched[incident.incident_id] = incident
        c = vlm.classification
        what = f"{c.defect_type}/{c.severity} ({c.confidence:.2f})" if c else str(vlm.status)
        self._say(f"{head}  {what}  [{vlm.duration_ms or 0:.0f} ms, {vlm.mode} mode]")
        if vlm.report is not None:
            self._say(f"{'':8}report  {vlm.report.summary}")
            for ref in vlm.report.manual_refs[:1]:
                self._say(f"{'':8}manual  {ref.file} § {ref.section}")
        for action in vlm.actions:
            self._say(f"{'':8}action  {action.tool} -> {action.status}: {action.detail}")

    def summary(self, store: Path) -> str:
        elapsed = (self._stopped or time.monotonic()) - self._started
        classes = (
            ", ".join(f"{name} {count}" for name, count in self.by_class.most_common()) or "none"
        )
        rate = self.inspections / max(elapsed, 1e-9)
        p50, p90, p99 = (percentile(self.latencies, q) for q in (50, 90, 99))
        return "\n".join(
            [
                "",
                "Edge Inspector demo summary",
                f"  frames inspected   {self.inspections} in {elapsed:.1f} s ({rate:.1f}/s)",
                f"  frames with defect {self.failed}",
                f"  incidents          {len(self.incidents)} ({classes})",
                f"  latency (ms)       p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}"
                "  (frame capture to result)",
                f"  store              {store} (history.sqlite3, images/)",
                *self._vlm_summary(),
            ]
        )

    def _vlm_summary(self) -> list[str]:
        if not self.enriched and not self.vlm_waiting:
            return []
        statuses = collections.Counter(
            str(i.vlm.status) for i in self.enriched.values() if i.vlm is not None
        )
        actions = collections.Counter(
            f"{a.tool} {a.status}"
            for i in self.enriched.values()
            if i.vlm is not None
            for a in i.vlm.actions
        )
        waiting = (
            f"{len(self.vlm_waiting)} still pending (kept in the store: the model answers them "
            "at the next start)"
            if self.vlm_waiting
            else "0 still pending"
        )
        return [
            f"  VLM                {len(self.enriched)} of {len(self.incidents)} incidents "
            f"answered ({', '.join(f'{k} {v}' for k, v in statuses.items()) or 'none'}); "
            f"{waiting}",
            f"  VLM actions        {', '.join(f'{k}: {v}' for k, v in actions.items()) or 'none'}",
        ]


def _demo_config(
    config_path: Path,
    *,
    store: Path,
    fps: float | None,
    ollama: str | None,
    vlm_model: str | None,
    http: int | None,
) -> EngineConfig:
    """The demo configuration with the command line's overrides; one station."""
    config = with_ollama(load_config(config_path), ollama, vlm_model)
    if http is None:  # the demo serves HTTP only when asked to (--http)
        config = config.model_copy(
            update={"http": config.http.model_copy(update={"enabled": False})}
        )
    config = with_http(config, http)
    station = config.stations[0]
    if fps is not None:
        station = station.model_copy(update={"fps": fps or None})
    return config.model_copy(
        update={
            "stations": (station,),
            "store": config.store.model_copy(update={"path": Path.cwd() / store}),
        }
    )


def _say_outputs(
    api: ApiServer | None, bridge: MqttBridge | None, station_id: str, out: TextIO
) -> None:
    """Where the HTTP API and the MQTT bridge (when there are) serve."""
    if api is not None:
        url = api.url
        print(
            f"HTTP API on {url} (live view: {url}/api/stations/{station_id}/stream.mjpeg)",
            file=out,
            flush=True,
        )
    if bridge is not None:
        print(
            f"publishing to {bridge.broker.redacted()} under {bridge.topics.base}/",
            file=out,
            flush=True,
        )


async def _wait_for_end(
    engine: Engine,
    reporter: DemoReporter,
    stop: asyncio.Event,
    *,
    duration: float | None,
    vlm_grace: float,
    out: TextIO,
) -> None:
    """Wait for a signal, the frame count or the duration; then give the VLM its grace time."""
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(reporter.done.wait())]
    await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    if stop.is_set():
        print("\nstopping (signal received)...", file=out, flush=True)
    elif engine.enricher is not None:
        await engine.stop_stations()
        reporter.stop_clock()
        print("waiting for the VLM to answer the last incidents...", file=out, flush=True)
        with contextlib.suppress(TimeoutError):
            await engine.enricher.wait_idle(timeout=vlm_grace)


async def run_demo(
    *,
    frames: int | None,
    duration: float | None,
    store: Path,
    fps: float | None,
    out: TextIO = sys.stdout,
    config_path: Path = DEMO_CONFIG,
    mqtt: str | None = None,
    ollama: str | None = None,
    vlm_model: str | None = None,
    vlm_grace: float = 120.0,
    http: int | None = None,
) -> DemoReporter:
    """Run the demo until `frames` or `duration` is reached, or until SIGINT/SIGTERM."""
    config = _demo_config(
        config_path, store=store, fps=fps, ollama=ollama, vlm_model=vlm_model, http=http
    )
    station = config.stations[0]
    reporter = DemoReporter(out, frames=frames)
    print(
        f"Edge Inspector demo: {station.name}, model {station.model.path.name}, "
        f"{'unlimited' if not station.fps else station.fps} fps; "
        f"{f'{frames} frames' if frames else f'{duration:.0f} s' if duration else 'until Ctrl-C'}",
        file=out,
        flush=True,
    )
    with stop_signals() as stop:
        async with Application(config, sinks=[reporter], mqtt_url=mqtt) as app:
            _say_outputs(app.api, app.bridge, station.id, out)
            reporter.start_clock()
            if app.engine.failed:
                error = next(iter(app.engine.failed.values())).error
                raise SystemExit(f"demo station failed: {error}")
            await _wait_for_end(
                app.engine, reporter, stop, duration=duration, vlm_grace=vlm_grace, out=out
            )
    print(reporter.summary(config.store.path), file=out, flush=True)
    return reporter
