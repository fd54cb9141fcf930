"""The engine as a service: its HTTP API (`server`: REST, websocket, MJPEG, Prometheus metrics)
and a client shaped like the engine (`client`, light: no model runtime needed)."""
