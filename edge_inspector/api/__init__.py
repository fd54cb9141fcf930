"""The engine as a service: its HTTP API (REST, websocket, MJPEG, Prometheus metrics)."""

from .server import ApiServer

__all__ = ["ApiServer"]
