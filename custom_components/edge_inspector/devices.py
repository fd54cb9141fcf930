"""Devices in Home Assistant's device registry, looked up alike on every supported release."""

from __future__ import annotations

from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr

from .const import DOMAIN


def device_by_identifier(
    hass: HomeAssistant, identifier: tuple[str, str], entry_id: str
) -> dr.DeviceEntry | None:
    """The device with this identifier that the config entry owns.

    Devices belong to one config entry since Home Assistant 2026.8, which looks them up by
    identifier and entry (`async_get_device` is deprecated there); before, the identifier alone
    found them. Drop the old branch when the oldest supported release has the new lookup.
    """
    registry = dr.async_get(hass)
    if hasattr(registry, "async_get_device_by_identifier"):
        return registry.async_get_device_by_identifier(identifier, entry_id)
    return registry.async_get_device(identifiers={identifier})


def station_device(hass: HomeAssistant, entry_id: str, identifier: str) -> dr.DeviceEntry | None:
    """The device of a station (`identifier` is its device identifier under our domain)."""
    return device_by_identifier(hass, (DOMAIN, identifier), entry_id)
