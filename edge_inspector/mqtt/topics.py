"""The MQTT topic tree and broker URLs.

<base>/status                  "online" / "offline" (retained, last will)
<base>/quality                 every station's KPIs over the published range (retained)
<base>/shift_report            the figures of the shift that ended last (QoS 1, retained)
<base>/<station>/kpi           the station's KPIs over the published range (retained)
<base>/<station>/state         station state JSON (retained)
<base>/<station>/inspection    each inspection (optional, rate-limited)
<base>/<station>/defect        each new incident (QoS 1)
<base>/<station>/incident      an incident updated later (QoS 1)
<base>/<station>/missed        a defect a person found that the station passed (QoS 1)
<base>/<station>/image         last annotated defect frame, JPEG (retained)
<base>/<station>/set           command: {"enabled": bool, "threshold": x, "thresholds": {...}}
<base>/<station>/inspect       command: {"part_id": ..., "lot_id": ...} or empty
<base>/<station>/error         the reply to a command that was refused
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

__all__ = ["BrokerUrl", "Topics", "parse_broker_url"]


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one base."""

    base: str = "edge_inspector"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def quality(self) -> str:
        return f"{self.base}/quality"

    @property
    def shift_report(self) -> str:
        return f"{self.base}/shift_report"

    def kpi(self, station: str) -> str:
        return f"{self.base}/{station}/kpi"

    def state(self, station: str) -> str:
        return f"{self.base}/{station}/state"

    def inspection(self, station: str) -> str:
        return f"{self.base}/{station}/inspection"

    def defect(self, station: str) -> str:
        return f"{self.base}/{station}/defect"

    def incident(self, station: str) -> str:
        return f"{self.base}/{station}/incident"

    def missed(self, station: str) -> str:
        return f"{self.base}/{station}/missed"

    def image(self, station: str) -> str:
        return f"{self.base}/{station}/image"

    def set(self, station: str) -> str:
        return f"{self.base}/{station}/set"

    def inspect(self, station: str) -> str:
        return f"{self.base}/{station}/inspect"

    def alert(self, station: str) -> str:
        return f"{self.base}/{station}/alert"

    def confirm(self, station: str) -> str:
        return f"{self.base}/{station}/confirm"

    def error(self, station: str) -> str:
        return f"{self.base}/{station}/error"

    def command(self, topic: str) -> tuple[str, str] | None:
        """(station, "set" | "inspect" | "confirm") for a command topic under this base."""
        prefix = f"{self.base}/"
        if not topic.startswith(prefix):
            return None
        station, _, command = topic[len(prefix) :].partition("/")
        if not station or command not in ("set", "inspect", "confirm"):
            return None
        return station, command


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """Where the broker is and how to log in: `mqtt://[user:pass@]host[:port]`, or `mqtts://`."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse a broker URL, with a clear error for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"{url!r}: a broker URL starts with mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ConfigError(f"{url!r}: the broker URL names no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"{url!r}: the port is not a number between 1 and 65535") from None
    return BrokerUrl(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
