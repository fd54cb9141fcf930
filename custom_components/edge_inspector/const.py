"""Constants of the Edge Inspector integration."""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "edge_inspector"

CONF_OLLAMA_URL: Final = "ollama_url"
CONF_OLLAMA_MODEL: Final = "ollama_model"
CONF_STORAGE: Final = "storage"
CONF_ACTIONS: Final = "actions"
CONF_MQTT_PUBLISH: Final = "mqtt_publish"
CONF_NOTIFY: Final = "notify_service"
ACTION_PREFIX: Final = "EDGE_INSPECTOR"
CONF_MQTT_BASE_TOPIC: Final = "mqtt_base_topic"
CONF_SHIFTS: Final = "shifts"
CONF_ENGINE_URL: Final = "engine_url"
CONF_ENGINE_TOKEN: Final = "engine_token"
CONF_CAMERAS: Final = "cameras"
DEFAULT_SHIFTS: Final = "06:00, 14:00, 22:00"

SUBENTRY_STATION: Final = "station"
CONF_CAMERA: Final = "camera_entity_id"
CONF_MODEL_PATH: Final = "model_path"
CONF_IMGSZ: Final = "imgsz"
CONF_DEFECTS: Final = "defects"
CONF_THRESHOLD: Final = "threshold"
CONF_INTERVAL: Final = "interval"
CONF_ROI: Final = "roi"
CONF_PRODUCT: Final = "product"
CONF_LINE: Final = "line"

DEFAULT_OLLAMA_MODEL: Final = "qwen2.5vl:7b"
DEFAULT_INTERVAL: Final = 2.0
DEFAULT_THRESHOLD: Final = 0.5
DEFAULT_IMGSZ: Final = 640

EVENT_DEFECT: Final = "edge_inspector_defect"
EVENT_INCIDENT: Final = "edge_inspector_incident"
EVENT_MISSED_DEFECT: Final = "edge_inspector_missed_defect"
EVENT_SHIFT_REPORT: Final = "edge_inspector_shift_report"

SIGNAL_INCIDENT: Final = "edge_inspector_incident_{}"
