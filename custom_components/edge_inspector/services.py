"""Services: inspect a station now, acknowledge an incident, query the history, a report."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import (
    HomeAssistant,
    ServiceCall,
    ServiceResponse,
    SupportsResponse,
    callback,
)
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import device_registry as dr
from homeassistant.util import dt as dt_util

from edge_inspector.errors import EdgeInspectorError
from edge_inspector.events import Incident, IncidentState

from .const import DOMAIN
from .errors import station_error
from .hub import EdgeInspectorHub
from .validation import vol

ATTR_DEVICE_ID = "device_id"
ATTR_PART_ID = "part_id"
ATTR_LOT_ID = "lot_id"
ATTR_INCIDENT_ID = "incident_id"
ATTR_STATE = "state"
ATTR_NOTE = "note"
ATTR_SINCE = "since"
ATTR_LIMIT = "limit"
ATTR_PERIOD = "period"


def _strict_int(value: Any) -> int:
    """An integer as given: not a string of digits, not a boolean (templates render native
    types, so `{{ 5 }}` is already an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise vol.Invalid(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_bool(value: Any) -> bool:
    """true or false as given: not "off", not 1 (a typo must not approve an action)."""
    if not isinstance(value, bool):
        raise vol.Invalid(f"expected true or false, got {type(value).__name__}")
    return value


# Ids and text stay `cv.string`: a number turned into its digits loses nothing, and a part id a
# template renders from a barcode sensor ("12345") arrives as a number (native types).

INSPECT_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_DEVICE_ID): cv.string,
        vol.Optional(ATTR_PART_ID): vol.All(cv.string, vol.Length(min=1, max=128)),
        vol.Optional(ATTR_LOT_ID): vol.All(cv.string, vol.Length(min=1, max=128)),
    }
)
ACKNOWLEDGE_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_INCIDENT_ID): cv.string,
        vol.Optional(ATTR_STATE, default="acknowledged"): vol.In(
            ["acknowledged", "confirmed", "rejected"]
        ),
        vol.Optional(ATTR_NOTE): vol.All(cv.string, vol.Length(max=500)),
    }
)
GET_INCIDENTS_SCHEMA = vol.Schema(
    {
        vol.Optional(ATTR_DEVICE_ID): cv.string,
        vol.Optional(ATTR_SINCE): cv.datetime,
        vol.Optional(ATTR_LIMIT, default=20): vol.All(_strict_int, vol.Range(1, 500)),
    }
)
MISSED_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_DEVICE_ID): cv.string,
        vol.Required("defect_class"): vol.All(cv.string, vol.Length(min=1, max=64)),
        vol.Optional(ATTR_PART_ID): vol.All(cv.string, vol.Length(min=1, max=128)),
        vol.Optional(ATTR_LOT_ID): vol.All(cv.string, vol.Length(min=1, max=128)),
        vol.Optional(ATTR_NOTE): vol.All(cv.string, vol.Length(max=500)),
    }
)
CONFIRM_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_INCIDENT_ID): vol.All(cv.string, vol.Length(min=1, max=64)),
        vol.Required("request_id"): vol.All(cv.string, vol.Length(min=1, max=64)),
        vol.Required("approve"): _strict_bool,
    }
)
REPORT_SCHEMA = vol.Schema(
    {
        vol.Optional(ATTR_DEVICE_ID): cv.string,
        vol.Optional(ATTR_PERIOD, default="today"): vol.In(
            ["today", "yesterday", "this_shift", "last_shift", "last_8_hours", "last_24_hours"]
        ),
    }
)


def _hubs(hass: HomeAssistant) -> list[EdgeInspectorHub]:
    hubs = [
        entry.runtime_data
        for entry in hass.config_entries.async_entries(DOMAIN)
        if entry.state is ConfigEntryState.LOADED
    ]
    if not hubs:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="not_loaded")
    return hubs


def _station(hass: HomeAssistant, device_id: str) -> tuple[EdgeInspectorHub, str]:
    device = dr.async_get(hass).async_get(device_id)
    if device is not None:
        subentries = {ident for domain, ident in device.identifiers if domain == DOMAIN}
        for hub in _hubs(hass):
            for info in hub.stations.values():
                if info.subentry_id in subentries:
                    return hub, info.station_id
    raise ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="unknown_station",
        translation_placeholders={"device_id": device_id},
    )


def _incident_data(incident: Incident) -> dict[str, Any]:
    return incident.model_dump(mode="json", exclude={"detections"})


async def _inspect(call: ServiceCall) -> ServiceResponse:
    hub, sid = _station(call.hass, call.data[ATTR_DEVICE_ID])
    result = await hub.async_inspect(
        sid, part_id=call.data.get(ATTR_PART_ID), lot_id=call.data.get(ATTR_LOT_ID)
    )
    return {
        "inspection_id": result.inspection_id,
        "verdict": str(result.verdict),
        "part_id": result.part_id,
        "lot_id": result.lot_id,
        "defects": [
            {"class": d.class_name, "confidence": round(d.confidence, 4)} for d in result.defects
        ],
        "new_incident_ids": list(result.new_incident_ids),
        "latency_ms": round(result.latency.total_ms, 1),
    }


async def _acknowledge(call: ServiceCall) -> ServiceResponse:
    ident = call.data[ATTR_INCIDENT_ID]
    state = IncidentState(call.data[ATTR_STATE])
    who = await _who(call)
    for hub in _hubs(call.hass):
        updated = await hub.async_set_verdict(ident, state, by=who, note=call.data.get(ATTR_NOTE))
        if updated is not None:
            return {
                "incident_id": ident,
                "state": str(state),
                "feedback": updated.extra["feedback"],
            }
    raise ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="unknown_incident",
        translation_placeholders={"incident_id": ident},
    )


async def _get_incidents(call: ServiceCall) -> ServiceResponse:
    since: datetime | None = call.data.get(ATTR_SINCE)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt_util.get_default_time_zone())
    pairs: list[tuple[EdgeInspectorHub, str | None]]
    if ATTR_DEVICE_ID in call.data:
        pairs = [_station(call.hass, call.data[ATTR_DEVICE_ID])]
    else:
        pairs = [(hub, None) for hub in _hubs(call.hass)]
    found: list[Incident] = []
    for hub, sid in pairs:
        found += await hub.engine.incidents(
            station_id=sid, since=since, limit=call.data[ATTR_LIMIT]
        )
    found.sort(key=lambda i: i.created_at, reverse=True)
    return {"incidents": [_incident_data(i) for i in found[: call.data[ATTR_LIMIT]]]}


async def _report_missed_defect(call: ServiceCall) -> ServiceResponse:
    """An operator found a defect the station passed: recorded for the false-accept rate."""
    hub, sid = _station(call.hass, call.data[ATTR_DEVICE_ID])
    incident = await hub.engine.report_missed_defect(
        sid,
        call.data["defect_class"],
        by=await _who(call),
        part_id=call.data.get(ATTR_PART_ID),
        lot_id=call.data.get(ATTR_LOT_ID),
        note=call.data.get(ATTR_NOTE),
    )
    return {"incident_id": incident.incident_id}


async def _who(call: ServiceCall) -> str:
    user_id = call.context.user_id
    if user_id and (user := await call.hass.auth.async_get_user(user_id)):
        return user.name or user_id
    return "service"


async def _confirm_action(call: ServiceCall) -> ServiceResponse:
    who = await _who(call)
    errors = []
    for hub in _hubs(call.hass):
        try:
            record = await hub.engine.resolve_action(
                call.data[ATTR_INCIDENT_ID],
                call.data["request_id"],
                approve=call.data["approve"],
                by=who,
            )
        except EdgeInspectorError as exc:
            errors.append(str(exc))
            continue
        return record.model_dump(mode="json")
    raise ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="cannot_confirm",
        translation_placeholders={"error": "; ".join(errors)},
    )


async def _report(call: ServiceCall) -> ServiceResponse:
    """The engine's figures over a period, per station, as data and as text."""
    period = call.data[ATTR_PERIOD]
    if ATTR_DEVICE_ID in call.data:
        pairs = [_station(call.hass, call.data[ATTR_DEVICE_ID])]
    else:
        pairs = [(hub, sid) for hub in _hubs(call.hass) for sid in hub.stations]
    stations = []
    label, since = period.replace("_", " "), None
    for hub, sid in pairs:
        try:
            report = await hub.engine.quality(period=period, station_id=sid)
        except EdgeInspectorError as exc:
            raise station_error(hub.stations[sid].name, exc) from exc
        [figures] = report.stations
        label, since = report.period, report.since
        stations.append(
            {
                "station": hub.stations[sid].name,
                **figures.model_dump(mode="json", exclude={"station_id", "name"}),
                "incidents_by_class": figures.by_class,
            }
        )
    head = f"Inspection report, {label}" + (f" (since {since:%Y-%m-%d %H:%M})" if since else "")
    lines = [head]
    for row in stations:
        classes = ", ".join(f"{c} {n}" for c, n in row["by_class"].items()) or "no incidents"
        yield_text = f" (yield {row['yield_percent']:.1f}%)" if row["inspections"] else ""
        lines.append(
            f"- {row['station']}: {row['inspections']} inspections, {row['failed']} failed"
            f"{yield_text}; {classes}"
        )
    return {
        "period": period,
        "since": since.isoformat() if since else None,
        "stations": stations,
        "text": "\n".join(lines),
    }


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register the integration's services."""
    hass.services.async_register(
        DOMAIN, "inspect", _inspect, INSPECT_SCHEMA, supports_response=SupportsResponse.OPTIONAL
    )
    hass.services.async_register(
        DOMAIN,
        "acknowledge",
        _acknowledge,
        ACKNOWLEDGE_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(
        DOMAIN,
        "get_incidents",
        _get_incidents,
        GET_INCIDENTS_SCHEMA,
        supports_response=SupportsResponse.ONLY,
    )
    hass.services.async_register(
        DOMAIN, "report", _report, REPORT_SCHEMA, supports_response=SupportsResponse.ONLY
    )
    hass.services.async_register(
        DOMAIN,
        "report_missed_defect",
        _report_missed_defect,
        MISSED_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(
        DOMAIN,
        "confirm_action",
        _confirm_action,
        CONFIRM_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
