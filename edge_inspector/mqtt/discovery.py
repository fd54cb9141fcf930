"""Home Assistant MQTT discovery: one device per station, with all its entities in one message.

Uses Home Assistant's device-based discovery (`<prefix>/device/<id>/config`, components under
`cmps`), so a station appears, changes and disappears as one unit; an empty retained payload
removes the device and its entities.
"""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..config import StationConfig
from ..events import VlmVerdict
from .topics import Topics

__all__ = ["discovery_payload", "discovery_topic", "unique_prefix"]


def unique_prefix(node_id: str, station_id: str) -> str:
    """Stable across restarts and unique per engine: `edge_inspector_<node>_<station>`."""
    return f"edge_inspector_{node_id}_{station_id}"


def discovery_topic(prefix: str, node_id: str, station_id: str) -> str:
    return f"{prefix}/device/{unique_prefix(node_id, station_id)}/config"


_ONLINE = {"payload_available": "online", "payload_not_available": "offline"}
_PERCENT = {
    "unit_of_measurement": "%",
    "state_class": "measurement",
    "suggested_display_precision": 1,
}
# Each entity of a station's device: its platform and options. A `*_topic` option names one of
# the station's topics (`Topics`); the device's `state_topic` is the default. The quality
# figures read the retained `kpi` (None, before any inspection, renders "None": unknown).
_COMPONENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "inspections": (
        "sensor",
        {
            "name": "Inspections",
            "state_class": "total_increasing",
            "icon": "mdi:magnify-scan",
            "value_template": "{{ value_json.inspections }}",
        },
    ),
    "defects": (
        "sensor",
        {
            "name": "Defects",
            "state_class": "total_increasing",
            "icon": "mdi:alert-decagram",
            "value_template": "{{ value_json.incidents }}",
        },
    ),
    **{
        key: (
            "sensor",
            {
                "name": name,
                **_PERCENT,
                "state_topic": "kpi",
                "value_template": f"{{{{ value_json.{field} }}}}",
            },
        )
        for key, name, field in (
            ("defect_rate", "Defect rate", "defect_rate_percent"),
            ("yield", "Yield", "yield_percent"),
            ("false_reject_rate", "False-reject rate", "false_reject_rate_percent"),
            ("false_accept_rate", "False-accept rate", "false_accept_rate_percent"),
        )
    },
    "out_of_control": (
        "binary_sensor",
        {
            "name": "Out of control",
            "device_class": "problem",
            "state_topic": "kpi",
            "value_template": (
                "{{ 'ON' if value_json.p_chart and value_json.p_chart.out_of_control else 'OFF' }}"
            ),
        },
    ),
    "last_defect_class": (
        "sensor",
        {
            "name": "Last defect class",
            "value_template": "{{ value_json.last_defect_class or 'none' }}",
        },
    ),
    "last_verdict": (  # the VLM's verdict in the latest incident update (None: unknown)
        "sensor",
        {
            "name": "Last model verdict",
            "device_class": "enum",
            "options": [str(v) for v in VlmVerdict],
            "icon": "mdi:scale-balance",
            "state_topic": "incident",
            "value_template": "{{ (value_json.vlm or {}).get('verdict') }}",
        },
    ),
    "latency": (
        "sensor",
        {
            "name": "Latency",
            "unit_of_measurement": "ms",
            "device_class": "duration",
            "state_class": "measurement",
            "entity_category": "diagnostic",
            "value_template": "{{ value_json.last_latency_ms }}",
        },
    ),
    "defect": (
        "binary_sensor",
        {
            "name": "Defect",
            "device_class": "problem",
            "value_template": "{{ 'ON' if value_json.defect_present else 'OFF' }}",
        },
    ),
    "defect_event": (  # its event types are the station's defect classes
        "event",
        {
            "name": "Defect",
            "state_topic": "defect",
            "value_template": (
                "{{ {'event_type': value_json.defect_class, 'incident_id': value_json.incident_id,"
                " 'confidence': value_json.confidence, 'part_id': value_json.part_id,"
                " 'vlm_verdict': (value_json.vlm or {}).get('verdict')} | tojson }}"
            ),
        },
    ),
    "last_defect_image": (
        "image",
        {"name": "Last defect", "image_topic": "image", "content_type": "image/jpeg"},
    ),
    "inspection_enabled": (
        "switch",
        {
            "name": "Inspection",
            "command_topic": "set",
            "payload_on": '{"enabled": true}',
            "payload_off": '{"enabled": false}',
            "state_on": "on",
            "state_off": "off",
            "value_template": "{{ 'on' if value_json.enabled else 'off' }}",
        },
    ),
    "inspect_now": (
        "button",
        {"name": "Inspect now", "command_topic": "inspect", "payload_press": "{}"},
    ),
    "confidence_threshold": (
        "number",
        {
            "name": "Confidence threshold",
            "entity_category": "config",
            "command_topic": "set",
            "command_template": '{"threshold": {{ value }}}',
            "value_template": "{{ value_json.threshold }}",
            "min": 0.05,
            "max": 0.95,
            "step": 0.05,
            "mode": "slider",
        },
    ),
}


def discovery_payload(station: StationConfig, topics: Topics, node_id: str) -> dict[str, Any]:
    """The device discovery message of one station."""
    uid = unique_prefix(node_id, station.id)
    state = topics.state(station.id)
    named = {
        "kpi": topics.kpi(station.id),
        "defect": topics.defect(station.id),
        "incident": topics.incident(station.id),
        "image": topics.image(station.id),
        "set": topics.set(station.id),
        "inspect": topics.inspect(station.id),
    }
    components = {
        key: {
            "p": platform,
            "unique_id": f"{uid}_{key}",
            "default_entity_id": f"{platform}.{station.id}_{key}",
            **{k: named[v] if k.endswith("_topic") else v for k, v in options.items()},
        }
        for key, (platform, options) in _COMPONENTS.items()
    }
    components["defect_event"]["event_types"] = sorted(station.defects)
    return {
        "device": {
            "identifiers": [uid],
            "name": station.name,
            "manufacturer": "Edge Inspector",
            "model": "Inspection station",
            "sw_version": __version__,
            **({"suggested_area": station.line} if station.line else {}),
        },
        "origin": {"name": "Edge Inspector", "sw_version": __version__},
        # The payloads are Home Assistant's defaults, stated: once, under load, Home Assistant
        # 2026.2 set up a discovered component without them (KeyError: 'payload_available').
        "availability": [
            {"topic": topics.status, **_ONLINE},
            {
                "topic": state,
                "value_template": "{{ 'online' if value_json.available else 'offline' }}",
                **_ONLINE,
            },
        ],
        "availability_mode": "all",
        "state_topic": state,
        "qos": 1,
        "components": components,
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
