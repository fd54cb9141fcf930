"""Websocket commands the dashboard card (and anyone with a token) uses."""

from __future__ import annotations

from typing import Any

from homeassistant.components.websocket_api import async_register_command
from homeassistant.components.websocket_api.connection import ActiveConnection
from homeassistant.components.websocket_api.const import ERR_NOT_FOUND
from homeassistant.components.websocket_api.decorators import async_response, websocket_command
from homeassistant.core import HomeAssistant, callback

from . import answers
from .validation import vol


@callback
def async_setup_websocket(hass: HomeAssistant) -> None:
    async_register_command(hass, ws_stations)
    async_register_command(hass, ws_station_overview)


@websocket_command({vol.Required("type"): "edge_inspector/stations"})
@async_response
async def ws_stations(
    hass: HomeAssistant, connection: ActiveConnection, msg: dict[str, Any]
) -> None:
    """Every station: id, name, line, device and defect classes (the card editor's list)."""
    stations = []
    for ref in answers.all_stations(hass):
        entities = answers.station_entities(hass, ref)
        stations.append(
            {
                "station_id": ref.station_id,
                "name": ref.info.name,
                "line": ref.info.line,
                "device_id": entities.pop("device_id", None),
                "defect_classes": list(ref.info.defects),
                "entities": entities,
            }
        )
    connection.send_result(msg["id"], {"stations": stations})


@websocket_command(
    {
        vol.Required("type"): "edge_inspector/station_overview",
        vol.Required("station_id"): str,
        vol.Optional("hours", default=8): vol.All(vol.Coerce(float), vol.Range(min=0.25, max=168)),
        vol.Optional("bucket_minutes", default=15): vol.All(
            vol.Coerce(float), vol.Range(min=1, max=1440)
        ),
    }
)
@async_response
async def ws_station_overview(
    hass: HomeAssistant, connection: ActiveConnection, msg: dict[str, Any]
) -> None:
    """One station as the card shows it: state, today's counts, the rate chart, last report."""
    try:
        ref = answers.station_by_id(hass, msg["station_id"])
    except answers.AnswerError as exc:
        connection.send_error(msg["id"], ERR_NOT_FOUND, str(exc))
        return
    overview = await answers.station_overview(
        hass, ref, hours=msg["hours"], bucket_minutes=msg["bucket_minutes"]
    )
    connection.send_result(msg["id"], overview)
