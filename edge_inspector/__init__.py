"""Edge Inspector: local AI visual inspection for Home Assistant and MQTT shop floors."""

from .errors import (
    ConfigError,
    EdgeInspectorError,
    ImageDecodeError,
    ModelError,
    SourceError,
    SourceExhaustedError,
    StationNotFoundError,
    StoreError,
)

__version__ = "0.2.0"

__all__ = [
    "ConfigError",
    "EdgeInspectorError",
    "ImageDecodeError",
    "ModelError",
    "SourceError",
    "SourceExhaustedError",
    "StationNotFoundError",
    "StoreError",
    "__version__",
]
