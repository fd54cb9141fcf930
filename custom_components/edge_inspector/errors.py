"""What a station's command or inspection failed with, said to the person who asked."""

from __future__ import annotations

from homeassistant.exceptions import HomeAssistantError

from .const import DOMAIN


def station_error(station: str, exc: Exception) -> HomeAssistantError:
    """A translated error naming the station (its name) and what the engine said."""
    return HomeAssistantError(
        translation_domain=DOMAIN,
        translation_key="station_error",
        translation_placeholders={"station": station, "error": str(exc)},
    )
