"""Prometheus metrics in the text exposition format (written here: no client library needed).

Counters come from the engine's events since the service started (and the stations' own frame
counters); gauges are read when scraped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import TYPE_CHECKING

from .. import __version__
from ..events import Incident, InspectionResult

if TYPE_CHECKING:
    from ..engine import Engine
    from ..mqtt.bridge import MqttBridge

# Seconds; the frame-to-event goal is 50 ms on an edge GPU.
BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def lines(self, name: str, **labels: str) -> list[str]:
        out = []
        running = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"{name}_bucket{_labels(**labels, le=le)} {running}")
        out.append(f"{name}_sum{_labels(**labels)} {self.sum:.6f}")
        out.append(f"{name}_count{_labels(**labels)} {self.count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.inspections: dict[tuple[str, str], int] = defaultdict(int)
        self.defects: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = defaultdict(Histogram)

    def inspection(self, result: InspectionResult) -> None:
        self.inspections[(result.station_id, str(result.verdict))] += 1
        latency = result.latency
        self.latency[(result.station_id, "total")].observe(latency.total_ms / 1000)
        self.latency[(result.station_id, "inference")].observe(latency.inference_ms / 1000)

    def incident(self, incident: Incident) -> None:
        self.defects[(incident.station_id, incident.defect_class)] += 1

    def render(self, engine: Engine, bridge: MqttBridge | None, websocket_clients: int) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("edge_inspector_info", "gauge", "The engine's version.")
        out.append(f"edge_inspector_info{_labels(version=__version__)} 1")

        stations = engine.stations
        family("edge_inspector_station_up", "gauge", "1 while a station runs and is enabled.")
        for state in engine.states():
            up = int(state.available and state.enabled and not state.error)
            out.append(f"edge_inspector_station_up{_labels(station=state.station_id)} {up}")
        family("edge_inspector_frames_total", "counter", "Frames read by each station.")
        for sid, station in stations.items():
            out.append(f"edge_inspector_frames_total{_labels(station=sid)} {station.frames}")
        family("edge_inspector_frame_errors_total", "counter", "Frames that could not be read.")
        for sid, station in stations.items():
            out.append(
                f"edge_inspector_frame_errors_total{_labels(station=sid)} {station.frame_errors}"
            )
        family("edge_inspector_inspections_total", "counter", "Inspections by verdict.")
        for (sid, verdict), n in sorted(self.inspections.items()):
            out.append(
                f"edge_inspector_inspections_total{_labels(station=sid, verdict=verdict)} {n}"
            )
        family("edge_inspector_defects_total", "counter", "Defect incidents by class.")
        for (sid, cls), n in sorted(self.defects.items()):
            out.append(f"edge_inspector_defects_total{_labels(station=sid, defect_class=cls)} {n}")
        family(
            "edge_inspector_latency_seconds",
            "histogram",
            "Frame to result (stage total) and model inference (stage inference).",
        )
        for (sid, stage), histogram in sorted(self.latency.items()):
            out += histogram.lines("edge_inspector_latency_seconds", station=sid, stage=stage)

        if engine.plc:
            links = sorted(engine.plc.items())
            family("edge_inspector_plc_up", "gauge", "1 while a station's PLC is connected.")
            for sid, link in links:
                up = int(link.connected.is_set())
                out.append(f"edge_inspector_plc_up{_labels(station=sid)} {up}")
            family("edge_inspector_plc_pending", "gauge", "Verdicts waiting for the PLC.")
            for sid, link in links:
                out.append(f"edge_inspector_plc_pending{_labels(station=sid)} {link.pending}")
            family("edge_inspector_plc_triggers_total", "counter", "PLC trigger edges, by outcome.")
            for sid, link in links:
                taken = link.edges - link.refused_edges
                for outcome, n in (("taken", taken), ("refused", link.refused_edges)):
                    labels = _labels(station=sid, outcome=outcome)
                    out.append(f"edge_inspector_plc_triggers_total{labels} {n}")
        family("edge_inspector_queue_depth", "gauge", "Work waiting, by queue.")
        inference = engine.inference_depth
        out.append(f"edge_inspector_queue_depth{_labels(queue='inference')} {inference}")
        for sid, station in stations.items():
            depth = station.pending_outputs
            out.append(f"edge_inspector_queue_depth{_labels(queue='outputs', station=sid)} {depth}")
        enricher = engine.enricher
        if enricher is not None:
            vlm_depth = enricher.queued
            out.append(f"edge_inspector_queue_depth{_labels(queue='vlm')} {vlm_depth}")
        if bridge is not None:
            out.append(f"edge_inspector_queue_depth{_labels(queue='mqtt')} {bridge.queued}")

        family("edge_inspector_vlm_up", "gauge", "1 while the VLM answers (absent: VLM off).")
        if enricher is not None:
            out.append(f"edge_inspector_vlm_up {int(enricher.last_error is None)}")
        family("edge_inspector_mqtt_connected", "gauge", "1 while connected to the broker.")
        if bridge is not None:
            out.append(f"edge_inspector_mqtt_connected {int(bridge.connected.is_set())}")
        family("edge_inspector_websocket_clients", "gauge", "Clients of the push channel.")
        out.append(f"edge_inspector_websocket_clients {websocket_clients}")
        return "\n".join(out) + "\n"
