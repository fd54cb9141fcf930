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
from .topics import Topics

__all__ = ["discovery_payload", "discovery_topic", "unique_prefix"]


def unique_prefix(node_id: str, station_id: str) -> str:
    """Stable across restarts and unique per engine: `edge_inspector_<node>_<station>`."""
    return f"edge_inspector_{node_id}_{station_id}"


def discovery_topic(prefix: str, node_id: str, station_id: str) -> str:
    return f"{prefix}/device/{unique_prefix(node_id, station_id)}/config"


def discovery_payload(station: StationConfig, topics: Topics, node_id: str) -> dict[str, Any]:
    """The device discovery message of one station."""
    uid = unique_prefix(node_id, station.id)
    state = topics.state(station.id)
    classes = sorted(station.defects)

    def component(platform: str, key: str, **options: Any) -> dict[str, Any]:
        return {
            "p": platform,
            "unique_id": f"{uid}_{key}",
            "default_entity_id": f"{platform}.{station.id}_{key}",
            **options,
        }

    event_template = (
        "{{ {'event_type': value_json.defect_class, 'incident_id': value_json.incident_id, "
        "'confidence': value_json.confidence, 'part_id': value_json.part_id} | tojson }}"
    )
    components = {
        "inspections": component(
            "sensor",
            "inspections",
            name="Inspections",
            state_class="total_increasing",
            icon="mdi:magnify-scan",
            value_template="{{ value_json.inspections }}",
        ),
        "defects": component(
            "sensor",
            "defects",
            name="Defects",
            state_class="total_increasing",
            icon="mdi:alert-decagram",
            value_template="{{ value_json.incidents }}",
        ),
        "defect_rate": component(
            "sensor",
            "defect_rate",
            name="Defect rate",
            unit_of_measurement="%",
            state_class="measurement",
            suggested_display_precision=1,
            value_template="{{ value_json.defect_rate }}",
        ),
        "last_defect_class": component(
            "sensor",
            "last_defect_class",
            name="Last defect class",
            value_template="{{ value_json.last_defect_class or 'none' }}",
        ),
        "latency": component(
            "sensor",
            "latency",
            name="Latency",
            unit_of_measurement="ms",
            device_class="duration",
            state_class="measurement",
            entity_category="diagnostic",
            value_template="{{ value_json.last_latency_ms }}",
        ),
        "defect": component(
            "binary_sensor",
            "defect",
            name="Defect",
            device_class="problem",
            value_template="{{ 'ON' if value_json.defect_present else 'OFF' }}",
        ),
        "defect_event": component(
            "event",
            "defect_event",
            name="Defect",
            event_types=classes,
            state_topic=topics.defect(station.id),
            value_template=event_template,
        ),
        "last_defect_image": component(
            "image",
            "last_defect_image",
            name="Last defect",
            image_topic=topics.image(station.id),
            content_type="image/jpeg",
        ),
        "inspection_enabled": component(
            "switch",
            "inspection_enabled",
            name="Inspection",
            command_topic=topics.set(station.id),
            payload_on='{"enabled": true}',
            payload_off='{"enabled": false}',
            state_on="on",
            state_off="off",
            value_template="{{ 'on' if value_json.enabled else 'off' }}",
        ),
        "inspect_now": component(
            "button",
            "inspect_now",
            name="Inspect now",
            command_topic=topics.inspect(station.id),
            payload_press="{}",
        ),
        "confidence_threshold": component(
            "number",
            "confidence_threshold",
            name="Confidence threshold",
            entity_category="config",
            command_topic=topics.set(station.id),
            command_template='{"threshold": {{ value }}}',
            value_template="{{ value_json.threshold }}",
            min=0.05,
            max=0.95,
            step=0.05,
            mode="slider",
        ),
    }
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
        "availability": [
            {"topic": topics.status},
            {
                "topic": state,
                "value_template": "{{ 'online' if value_json.available else 'offline' }}",
            },
        ],
        "availability_mode": "all",
        "state_topic": state,
        "qos": 1,
        "components": components,
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
