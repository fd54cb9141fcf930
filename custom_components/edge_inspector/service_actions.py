"""The VLM's `service` actions, carried out as Home Assistant services (or scripts)."""

from __future__ import annotations

from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError

from edge_inspector.config import ActionConfig, ServiceActionTarget
from edge_inspector.tools.actions import ActionContext, ActionError

from .validation import vol


class HaServicePort:
    """`service` action targets: a Home Assistant service (or script) with its fixed data.

    The fixed data names what is acted on, so the model never picks the entity. The model's
    arguments (checked against the action's schema) are kept on the incident, and passed as
    service data only with `pass_arguments: true` (a script with fields); the fixed data wins."""

    def __init__(self, hass: HomeAssistant) -> None:
        self.hass = hass

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str:
        target = action.target
        assert isinstance(target, ServiceActionTarget)
        domain, service = target.service.split(".", 1)
        if not self.hass.services.has_service(domain, service):
            raise ActionError(f"Home Assistant has no service {target.service}")
        try:
            data = {**arguments, **target.data} if target.pass_arguments else dict(target.data)
            await self.hass.services.async_call(domain, service, data, blocking=True)
        except (HomeAssistantError, vol.Invalid) as exc:
            raise ActionError(f"{target.service} failed: {exc}") from exc
        return f"called {target.service}"
