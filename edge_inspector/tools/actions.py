"""Mapped actions and their guard rails: allowlist, argument schema, rate limit, confirm.

The model proposes; this module decides. A tool call is executed only when the tool was
offered at that station, its arguments fit the declared schema, the rate limit allows it, and
the action does not ask for a human. Whatever the outcome, it comes back as an `ActionRecord`
for the incident's audit trail, and as a short text the model can read.

Targets are ports: `mqtt` (the engine's broker), `webhook` (HTTP), and `service` (Home
Assistant, registered by the integration). An action whose port is missing fails clearly.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from ..config import ActionConfig, StationConfig, VlmConfig, WebhookActionTarget
from ..errors import EdgeInspectorError
from ..events import ActionRecord, ActionStatus
from .schema import validate_arguments

__all__ = [
    "ActionContext",
    "ActionError",
    "ActionGuard",
    "ActionPort",
    "RateLimiter",
    "WebhookPort",
]

_LOGGER = logging.getLogger(__name__)


class ActionError(EdgeInspectorError):
    """An allowed action could not be carried out by its target."""


@dataclass(frozen=True, slots=True)
class ActionContext:
    """What an action is about; sent with the arguments to the target."""

    station_id: str
    incident_id: str
    defect_class: str
    severity: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "incident_id": self.incident_id,
            "defect_class": self.defect_class,
            "severity": self.severity,
        }


class ActionPort(Protocol):
    """Carries out actions of one target type; raises ActionError when it cannot."""

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str: ...


class WebhookPort:
    """`webhook` targets: an HTTP request with the call as JSON; any 2xx is success."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        self._session = session

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str:
        target = action.target
        assert isinstance(target, WebhookActionTarget)
        body = {"action": action.name, "arguments": arguments, **context.as_dict()}
        try:
            async with self._session().request(
                target.method,
                target.url,
                json=body,
                headers=target.headers,
                timeout=aiohttp.ClientTimeout(total=target.timeout),
            ) as response:
                text = (await response.text())[:200]
                if response.status >= 300:
                    raise ActionError(f"webhook answered HTTP {response.status}: {text}")
                return f"webhook answered HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ActionError(f"webhook failed: {type(exc).__name__}: {exc}") from None


class RateLimiter:
    """A sliding window per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[str, collections.deque[float]] = {}

    def allow(self, key: str, calls: int, per_seconds: float) -> bool:
        now = self._clock()
        window = self._calls.setdefault(key, collections.deque())
        while window and now - window[0] >= per_seconds:
            window.popleft()
        if len(window) >= calls:
            return False
        window.append(now)
        return True


class ActionGuard:
    """Decides and carries out the model's action calls for every station."""

    def __init__(
        self,
        config: VlmConfig,
        ports: dict[str, ActionPort] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.ports: dict[str, ActionPort] = ports if ports is not None else {}  # shared, live
        self.limiter = RateLimiter(clock)
        self._timeout = timeout

    def offered(self, station: StationConfig) -> list[ActionConfig]:
        """The actions the model may use at `station`."""
        names = station.actions
        return [a for a in self.config.actions if names is None or a.name in names]

    @staticmethod
    def _record(
        tool: str,
        arguments: dict[str, Any],
        status: ActionStatus,
        detail: str,
        *,
        by: str,
        request_id: str | None = None,
    ) -> ActionRecord:
        return ActionRecord(
            tool=tool,
            arguments=arguments,
            status=status,
            detail=detail,
            at=datetime.now(UTC),
            request_id=request_id,
            by=by,
        )

    async def call(
        self,
        name: str,
        arguments: Any,
        context: ActionContext,
        offered: Iterable[str],
        *,
        by: str = "model",
    ) -> ActionRecord:
        """One proposed call, through every guard rail."""
        args: dict[str, Any] = dict(arguments) if isinstance(arguments, dict) else {}
        action = self.config.action(name)
        if action is None or name not in set(offered):
            _LOGGER.warning(
                "incident %s: refused tool %r: not offered at %s",
                context.incident_id,
                name,
                context.station_id,
            )
            return self._record(
                name, args, ActionStatus.REFUSED, f"unknown tool {name!r}: not offered", by=by
            )
        errors = validate_arguments(action.parameters, arguments)
        if errors:
            _LOGGER.warning(
                "incident %s: refused %s: bad arguments: %s",
                context.incident_id,
                name,
                "; ".join(errors),
            )
            return self._record(
                name, args, ActionStatus.REFUSED, "bad arguments: " + "; ".join(errors), by=by
            )
        limit = action.rate_limit
        if not self.limiter.allow(name, limit.calls, limit.per_seconds):
            _LOGGER.warning("incident %s: %s rate limited", context.incident_id, name)
            return self._record(
                name,
                args,
                ActionStatus.RATE_LIMITED,
                f"rate limit: at most {limit.calls} per {limit.per_seconds:g} s",
                by=by,
            )
        if action.confirm:
            return self._record(
                name,
                args,
                ActionStatus.AWAITING_CONFIRMATION,
                "a human must confirm this action",
                by=by,
                request_id=uuid.uuid4().hex,
            )
        return await self._execute(action, args, context, by=by)

    async def approve(
        self, request: ActionRecord, context: ActionContext, *, by: str
    ) -> ActionRecord:
        """A human approved a confirmation request: execute it now (schema checked again)."""
        action = self.config.action(request.tool)
        if action is None:
            return self._record(
                request.tool, request.arguments, ActionStatus.REFUSED, "no such action", by=by
            )
        errors = validate_arguments(action.parameters, request.arguments)
        if errors:
            return self._record(
                request.tool,
                request.arguments,
                ActionStatus.REFUSED,
                "bad arguments: " + "; ".join(errors),
                by=by,
            )
        record = await self._execute(action, dict(request.arguments), context, by=by)
        return record.model_copy(update={"request_id": request.request_id})

    async def _execute(
        self, action: ActionConfig, args: dict[str, Any], context: ActionContext, *, by: str
    ) -> ActionRecord:
        port = self.ports.get(action.target.type)
        if port is None:
            detail = f"no {action.target.type} target is connected" + (
                " (service actions run in Home Assistant)"
                if action.target.type == "service"
                else ""
            )
            return self._record(action.name, args, ActionStatus.FAILED, detail, by=by)
        try:
            async with asyncio.timeout(self._timeout):
                detail = await port.execute(action, args, context)
        except ActionError as exc:
            _LOGGER.error(
                "incident %s: action %s failed: %s", context.incident_id, action.name, exc
            )
            return self._record(action.name, args, ActionStatus.FAILED, str(exc), by=by)
        except TimeoutError:
            return self._record(
                action.name, args, ActionStatus.FAILED, "the target did not answer in time", by=by
            )
        _LOGGER.info(
            "incident %s: action %s executed: %s",
            context.incident_id,
            action.name,
            json.dumps(args)[:200],
        )
        return self._record(action.name, args, ActionStatus.EXECUTED, detail, by=by)
