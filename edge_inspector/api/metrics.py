"""Prometheus metrics in the text exposition format, written by `prometheus_client`.

Counters come from the engine's events since the service started (and the stations' own frame
counters); gauges are read when scraped. Each `Metrics` has its own registry (never the library's
global one) holding one collector that builds every family from the engine's state at scrape time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from ..events import Incident, InspectionResult

if TYPE_CHECKING:
    from ..engine import Engine
    from ..mqtt.bridge import MqttBridge

# Seconds; the frame-to-event goal is 50 ms on an edge GPU.
BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = (*(repr(bound) for bound in BUCKETS), "+Inf")  # the `le` labels: "0.005" … "10.0", "+Inf"


class Histogram:
    """One latency series: counts per bucket (not cumulative), their sum and count."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as the exposition has them; the last (+Inf) is the count."""
        out: list[tuple[str, float]] = []
        running = 0
        for le, n in zip(_LE, self.counts, strict=True):
            running += n
            out.append((le, running))
        return out


@dataclass(frozen=True, slots=True)
class _Scrape:
    engine: Engine
    bridge: MqttBridge | None
    websocket_clients: int


class _EngineCollector(Collector):
    """Every family, in a fixed order, from the scrape in progress (none outside `render`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.scrape: _Scrape | None = None

    def collect(self) -> Iterator[Metric]:
        scrape = self.scrape
        if scrape is None:
            return
        yield from self._stations(scrape.engine)
        yield from self._plc(scrape.engine)
        yield from self._services(scrape)

    def _stations(self, engine: Engine) -> Iterator[Metric]:
        m = self.metrics
        info = GaugeMetricFamily("edge_inspector_info", "The engine's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        stations = engine.stations
        station_up = GaugeMetricFamily(
            "edge_inspector_station_up",
            "1 while a station runs and is enabled.",
            labels=["station"],
        )
        for state in engine.states():
            up = int(state.available and state.enabled and not state.error)
            station_up.add_metric([state.station_id], up)
        yield station_up
        frames = CounterMetricFamily(
            "edge_inspector_frames_total", "Frames read by each station.", labels=["station"]
        )
        for sid, station in stations.items():
            frames.add_metric([sid], station.frames)
        yield frames
        frame_errors = CounterMetricFamily(
            "edge_inspector_frame_errors_total",
            "Frames that could not be read.",
            labels=["station"],
        )
        for sid, station in stations.items():
            frame_errors.add_metric([sid], station.frame_errors)
        yield frame_errors
        inspections = CounterMetricFamily(
            "edge_inspector_inspections_total",
            "Inspections by verdict.",
            labels=["station", "verdict"],
        )
        for (sid, verdict), n in sorted(m.inspections.items()):
            inspections.add_metric([sid, verdict], n)
        yield inspections
        defects = CounterMetricFamily(
            "edge_inspector_defects_total",
            "Defect incidents by class.",
            labels=["station", "defect_class"],
        )
        for (sid, cls), n in sorted(m.defects.items()):
            defects.add_metric([sid, cls], n)
        yield defects
        latency = HistogramMetricFamily(
            "edge_inspector_latency_seconds",
            "Frame to result (stage total) and model inference (stage inference).",
            labels=["station", "stage"],
        )
        for (sid, stage), histogram in sorted(m.latency.items()):
            # the sum to the microsecond, as the exposition has always had it
            latency.add_metric([sid, stage], histogram.buckets(), round(histogram.sum, 6))
        yield latency

    @staticmethod
    def _plc(engine: Engine) -> Iterator[Metric]:
        if engine.plc:
            links = sorted(engine.plc.items())
            plc_up = GaugeMetricFamily(
                "edge_inspector_plc_up", "1 while a station's PLC is connected.", labels=["station"]
            )
            for sid, link in links:
                plc_up.add_metric([sid], int(link.connected.is_set()))
            yield plc_up
            plc_pending = GaugeMetricFamily(
                "edge_inspector_plc_pending", "Verdicts waiting for the PLC.", labels=["station"]
            )
            for sid, link in links:
                plc_pending.add_metric([sid], link.pending)
            yield plc_pending
            triggers = CounterMetricFamily(
                "edge_inspector_plc_triggers_total",
                "PLC trigger edges, by outcome.",
                labels=["station", "outcome"],
            )
            for sid, link in links:
                taken = link.edges - link.refused_edges
                for outcome, n in (("taken", taken), ("refused", link.refused_edges)):
                    triggers.add_metric([sid, outcome], n)
            yield triggers

    @staticmethod
    def _services(scrape: _Scrape) -> Iterator[Metric]:
        engine, bridge = scrape.engine, scrape.bridge
        stations = engine.stations
        # Its samples have different label sets (`station` only on the outputs queues), which
        # add_metric (one label list per family) cannot write: each sample is added whole.
        queue_depth = GaugeMetricFamily("edge_inspector_queue_depth", "Work waiting, by queue.")
        queue_depth.add_sample(queue_depth.name, {"queue": "inference"}, engine.inference_depth)
        for sid, station in stations.items():
            queue_depth.add_sample(
                queue_depth.name, {"queue": "outputs", "station": sid}, station.pending_outputs
            )
        enricher = engine.enricher
        if enricher is not None:
            queue_depth.add_sample(queue_depth.name, {"queue": "vlm"}, enricher.queued)
        if bridge is not None:
            queue_depth.add_sample(queue_depth.name, {"queue": "mqtt"}, bridge.queued)
        yield queue_depth

        vlm_up = GaugeMetricFamily(
            "edge_inspector_vlm_up", "1 while the VLM answers (absent: VLM off)."
        )
        if enricher is not None:
            vlm_up.add_metric([], int(enricher.last_error is None))
        yield vlm_up
        oldest = GaugeMetricFamily(
            "edge_inspector_vlm_oldest_pending_seconds",
            "How long the oldest incident not answered by the VLM has waited (0: none waits).",
        )
        if enricher is not None:
            oldest.add_metric([], enricher.oldest_pending_s or 0.0)
        yield oldest
        counts = (
            ("skipped", "Incidents the VLM skipped: they waited over vlm.max_age."),
            ("coalesced", "Repeats answered by another incident's VLM call."),
            ("displaced", "Incidents a full VLM queue left pending in the store, for later."),
        )
        for name, documentation in counts:
            counter = CounterMetricFamily(f"edge_inspector_vlm_{name}", documentation)
            if enricher is not None:
                counter.add_metric([], enricher.counts[name])
            yield counter
        mqtt = GaugeMetricFamily(
            "edge_inspector_mqtt_connected", "1 while connected to the broker."
        )
        if bridge is not None:
            mqtt.add_metric([], int(bridge.connected.is_set()))
        yield mqtt
        clients = GaugeMetricFamily(
            "edge_inspector_websocket_clients", "Clients of the push channel."
        )
        clients.add_metric([], scrape.websocket_clients)
        yield clients


class Metrics:
    def __init__(self) -> None:
        self.inspections: dict[tuple[str, str], int] = defaultdict(int)
        self.defects: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.registry = CollectorRegistry()  # this object's own, never prometheus_client.REGISTRY
        self._collector = _EngineCollector(self)
        self.registry.register(self._collector)

    def inspection(self, result: InspectionResult) -> None:
        self.inspections[(result.station_id, str(result.verdict))] += 1
        latency = result.latency
        self.latency[(result.station_id, "total")].observe(latency.total_ms / 1000)
        self.latency[(result.station_id, "inference")].observe(latency.inference_ms / 1000)

    def incident(self, incident: Incident) -> None:
        self.defects[(incident.station_id, incident.defect_class)] += 1

    def render(self, engine: Engine, bridge: MqttBridge | None, websocket_clients: int) -> str:
        """The Prometheus text exposition of the engine as it is now."""
        self._collector.scrape = _Scrape(engine, bridge, websocket_clients)
        try:
            return generate_latest(self.registry).decode()
        finally:
            self._collector.scrape = None
