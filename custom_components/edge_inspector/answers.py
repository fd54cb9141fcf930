"""Answers about inspection, from the engine's store: one source for Assist and the card.

The LLM tools (`llm_api.py`), the intents (`intents.py`) and the dashboard card's websocket
commands (`websocket.py`) all call these functions, so a question asked by voice, by an LLM or
read off the card gets the same, exact figures, offline. Each answer is a JSON-able dict that
starts with a `speech` line a voice assistant can say as is; the figures follow, and the ids
(which nobody should read out) come last: a small model reads a result from the top and repeats
what it read first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.util import dt as dt_util

from edge_inspector.errors import EdgeInspectorError, ManualsNotIndexedError
from edge_inspector.events import Incident, QualityReport

from .const import DOMAIN
from .coordinator import StationSnapshot
from .devices import station_device
from .entry_config import StationInfo
from .hub import EdgeInspectorHub


class AnswerError(HomeAssistantError):
    """A question that cannot be answered as asked (unknown station, period or incident)."""


@dataclass(frozen=True, slots=True)
class StationRef:
    hub: EdgeInspectorHub
    info: StationInfo

    @property
    def station_id(self) -> str:
        return self.info.station_id

    @property
    def snapshot(self) -> StationSnapshot:
        """What the engine last said of the station."""
        return self.hub.coordinators[self.station_id].data


async def quality(ref: StationRef, period: str | None) -> QualityReport:
    """The engine's figures for one station over a range said in words (the engine knows the
    plant's shifts and time zone). AnswerError for a range it does not understand."""
    try:
        return await ref.hub.engine.quality(period=period or "today", station_id=ref.station_id)
    except EdgeInspectorError as exc:  # a range not understood; an engine service away (or
        raise AnswerError(str(exc)) from exc  # one from before quality figures: 404)


def _norm(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    words = [w for w in text.split() if w not in ("the", "station", "stations")]
    return " ".join(words)


def hubs(hass: HomeAssistant) -> list[EdgeInspectorHub]:
    return [
        entry.runtime_data
        for entry in hass.config_entries.async_entries(DOMAIN)
        if entry.state is ConfigEntryState.LOADED
    ]


def all_stations(hass: HomeAssistant) -> list[StationRef]:
    return [StationRef(hub, info) for hub in hubs(hass) for info in hub.stations.values()]


def find_stations(hass: HomeAssistant, name: str | None) -> list[StationRef]:
    """The stations a name means: a station's name or id, or a line ('line 2') with all its
    stations; nothing (or 'all') means every station. Unknown names raise AnswerError."""
    stations = all_stations(hass)
    if not stations:
        raise AnswerError("Edge Inspector has no stations set up")
    wanted = _norm(name or "")
    if wanted in ("", "all", "every", "any", "each", "all of them"):
        return stations
    exact = [
        s
        for s in stations
        if wanted in (_norm(s.info.name), _norm(s.station_id), _norm(s.info.line or ""))
    ]
    if exact:
        return exact
    partial = [s for s in stations if wanted in _norm(s.info.name)]
    if partial:
        return partial
    known = ", ".join(sorted(s.info.name for s in stations))
    raise AnswerError(f"there is no station called {name!r} (stations: {known})")


def station_by_device(hass: HomeAssistant, device_id: str) -> StationRef:
    device = dr.async_get(hass).async_get(device_id)
    if device is not None:
        idents = {ident for domain, ident in device.identifiers if domain == DOMAIN}
        for ref in all_stations(hass):
            if ref.info.subentry_id in idents:
                return ref
    raise AnswerError(f"device {device_id} is not an Edge Inspector station")


def station_by_id(hass: HomeAssistant, station_id: str) -> StationRef:
    for ref in all_stations(hass):
        if ref.station_id == station_id:
            return ref
    raise AnswerError(f"there is no station with id {station_id!r}")


def defect_classes(text: str | None, stations: list[StationRef]) -> set[str] | None:
    """The defect classes a word means ('scratches' is `scratch`); None means every class."""
    wanted = _norm(text or "")
    if wanted in ("", "defect", "defects", "problem", "problems", "fault", "faults", "all"):
        return None
    known = {c for s in stations for c in s.info.defects}
    for candidate in (wanted, wanted.removesuffix("es"), wanted.removesuffix("s")):
        for cls in known:
            if _norm(cls) == candidate or _norm(cls).replace("_", " ") == candidate:
                return {cls}
    listed = ", ".join(sorted(known))
    raise AnswerError(f"no station looks for {text!r} (defect classes: {listed})")


def plural(word: str) -> str:
    """English plural of a defect class ('scratch' -> 'scratches')."""
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def _count(n: int, word: str) -> str:
    return f"1 {word}" if n == 1 else f"{n} {plural(word)}"


def _when(moment: datetime) -> str:
    local = dt_util.as_local(moment)
    if local.date() == dt_util.now().date():
        return f"at {local:%H:%M}"
    return f"on {local:%Y-%m-%d} at {local:%H:%M}"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _where(stations: list[StationRef], everything: bool) -> str:
    if everything:
        return "on all stations"
    return "on " + _join([s.info.name for s in stations])


# -- the answers -------------------------------------------------------------------------


async def defect_count(
    hass: HomeAssistant,
    *,
    station: str | None = None,
    defect_class: str | None = None,
    period: str | None = None,
) -> dict[str, Any]:
    """Defects (incidents) by class in a time range, per station, with inspection counts."""
    stations = find_stations(hass, station)
    everything = len(stations) == len(all_stations(hass)) and not station
    classes = defect_classes(defect_class, stations)
    rows: list[dict[str, Any]] = []
    overall: dict[str, int] = {}
    total = 0
    for ref in stations:
        report = await quality(ref, period)
        [figures] = report.stations
        by_class = {c: n for c, n in figures.by_class.items() if not classes or c in classes}
        total += sum(by_class.values())
        for cls, n in by_class.items():
            overall[cls] = overall.get(cls, 0) + n
        rows.append(
            {
                "station": ref.info.name,
                "line": ref.info.line,
                "defects": sum(by_class.values()),
                "by_class": by_class,
                "inspections": figures.inspections,
                "failed": figures.failed,
                "defect_rate_percent": figures.defect_rate_percent,
                "station_id": ref.station_id,
            }
        )
    word = next(iter(classes)).replace("_", " ") if classes else "defect"
    speech = f"{_count(total, word)} {_where(stations, everything)} {report.period}"
    if not classes and total:
        parts = [
            _count(n, c.replace("_", " ")) for c, n in sorted(overall.items(), key=lambda x: -x[1])
        ]
        speech += f": {_join(parts)}"
    return {
        "speech": speech + ".",
        "total": total,
        "defect_class": sorted(classes) if classes else None,
        "period": report.period,
        "since": report.since.isoformat(),
        "until": report.until.isoformat() if report.complete else None,
        "stations": rows,
    }


def _status_row(ref: StationRef) -> dict[str, Any]:
    info, hub, snapshot = ref.info, ref.hub, ref.snapshot
    state = snapshot.state
    available = hub.is_available(ref.station_id)
    enabled = bool(state and state.enabled)
    error = hub.cameras.health[ref.station_id].error or (state.error if state else None)
    last = snapshot.last_incident
    return {
        "station": info.name,
        "line": info.line,
        "running": available and enabled,
        "enabled": enabled,
        "available": available,
        "mode": state.mode if state else None,
        "error": error,
        "inspections_since_start": state.inspections if state else 0,
        "defect_present": bool(state and state.defect_present),
        "last_defect": None
        if last is None
        else {
            "defect_class": last.defect_class,
            "at": last.created_at.isoformat(),
            "incident_id": last.incident_id,
        },
        "station_id": ref.station_id,
    }


def _status_speech(row: dict[str, Any]) -> str:
    name = row["station"]
    if row["running"]:
        text = f"{name} is running"
    elif not row["available"]:
        text = f"{name} is not running: {row['error'] or 'it is unavailable'}"
    else:
        text = f"{name} is switched off"
    return text


async def station_status(hass: HomeAssistant, *, station: str | None = None) -> dict[str, Any]:
    """Whether each station runs, why not, and today's inspections and defects."""
    stations = find_stations(hass, station)
    rows = []
    for ref in stations:
        row = _status_row(ref)
        [today] = (await quality(ref, "today")).stations
        row["inspections_today"] = today.inspections
        row["defects_today"] = today.incidents
        row["yield_today_percent"] = today.yield_percent
        rows.append(row)
    speech = "; ".join(
        _status_speech(r) + f", {_count(r['defects_today'], 'defect')} today" for r in rows
    )
    return {"speech": speech + ".", "stations": rows}


def incident_summary(incident: Incident) -> dict[str, Any]:
    vlm = incident.vlm
    return {
        "defect_class": incident.defect_class,
        "station": incident.station_name,
        "created_at": incident.created_at.isoformat(),
        "summary": vlm.report.summary if vlm and vlm.report else None,
        "confidence": round(incident.confidence, 3),
        "part_id": incident.part_id,
        "lot_id": incident.lot_id,
        "state": str(incident.state),
        "vlm_status": str(vlm.status) if vlm else None,
        "vlm_verdict": str(vlm.verdict) if vlm and vlm.verdict else None,
        "incident_id": incident.incident_id,
        "station_id": incident.station_id,
    }


async def _latest(
    hass: HomeAssistant, stations: list[StationRef], limit: int, span: QualityReport | None
) -> list[Incident]:
    found: list[Incident] = []
    for ref in stations:
        found += await ref.hub.engine.incidents(
            station_id=ref.station_id,
            since=span.since if span else None,
            until=span.until if span and span.complete else None,
            limit=limit,
        )
    found.sort(key=lambda i: i.created_at, reverse=True)
    return found[:limit]


async def latest_incidents(
    hass: HomeAssistant, *, station: str | None = None, limit: int = 5, period: str | None = None
) -> dict[str, Any]:
    stations = find_stations(hass, station)
    span = await quality(stations[0], period) if period else None
    found = await _latest(hass, stations, limit, span)
    if not found:
        speech = "No defects recorded" + (f" {span.period}" if span else "") + "."
    else:
        last = found[0]
        speech = (
            f"The last defect was a {last.defect_class.replace('_', ' ')} on "
            f"{last.station_name} {_when(last.created_at)}"
            + (f", part {last.part_id}" if last.part_id else "")
            + "."
        )
        if last.vlm and last.vlm.report:
            speech += f" {last.vlm.report.summary}"
    return {"speech": speech, "incidents": [incident_summary(i) for i in found]}


async def incident_report(
    hass: HomeAssistant, *, incident_id: str | None = None, station: str | None = None
) -> dict[str, Any]:
    """One incident's full report (the latest one when no id is given)."""
    incident: Incident | None = None
    if incident_id:
        for hub in hubs(hass):
            if (incident := await hub.engine.incident(incident_id)) is not None:
                break
        if incident is None:
            raise AnswerError(f"there is no incident {incident_id!r}")
    else:
        latest = await _latest(hass, find_stations(hass, station), 1, None)
        if not latest:
            raise AnswerError("no defects have been recorded yet")
        incident = latest[0]
    return report_data(incident)


def report_data(incident: Incident) -> dict[str, Any]:
    """An incident's summary, VLM report, actions and verdicts, with a line to say."""
    data: dict[str, Any] = {"speech": None, **incident_summary(incident)}  # said first
    vlm = incident.vlm
    report = vlm.report if vlm else None
    data["report"] = report.model_dump(mode="json") if report else None
    data["classification"] = (
        vlm.classification.model_dump(mode="json") if vlm and vlm.classification else None
    )
    data["actions"] = [a.model_dump(mode="json") for a in vlm.actions] if vlm else []
    data["feedback"] = incident.extra.get("feedback", [])
    head = (
        f"{incident.defect_class.replace('_', ' ').capitalize()} on {incident.station_name} "
        f"{_when(incident.created_at)} ({incident.confidence:.0%})"
    )
    if report:
        steps = " ".join(f"{n}. {s}" for n, s in enumerate(report.fix_steps, 1))
        speech = f"{head}. {report.summary} Probable cause: {report.probable_cause}."
        if steps:
            speech += f" Fix: {steps}"
    elif vlm is not None:
        speech = f"{head}. The report is {vlm.status}" + (f": {vlm.error}" if vlm.error else ".")
    else:
        speech = f"{head}. No report: the vision-language model is not configured."
    data["speech"] = speech
    return data


async def manual_search(hass: HomeAssistant, *, query: str, limit: int = 3) -> dict[str, Any]:
    query = query.strip()
    if not query:
        raise AnswerError("say what to look for in the manuals")
    hits: list[Any] = []
    indexed = False
    for hub in hubs(hass):
        try:
            hits += await hub.engine.search_manuals(query, limit=limit)
        except ManualsNotIndexedError:
            continue
        indexed = True
    if not indexed:
        raise AnswerError(
            "no equipment manuals are indexed: put them in the `manuals` folder of the "
            "Edge Inspector storage directory and reload the integration"
        )
    hits.sort(key=lambda h: h.score)
    hits = hits[:limit]
    results = [
        {
            "reference": h.reference,
            "file": h.file,
            "section": h.section,
            "page": h.page,
            "excerpt": h.excerpt,
        }
        for h in hits
    ]
    speech = (
        f"From {hits[0].reference}: {hits[0].excerpt}"
        if hits
        else f"Nothing about {query!r} in the manuals."
    )
    return {"speech": speech, "query": query, "results": results}


async def inspect_now(
    hass: HomeAssistant,
    *,
    station: str,
    part_id: str | None = None,
    lot_id: str | None = None,
) -> dict[str, Any]:
    """Take a picture at the station(s) now and inspect it."""
    stations = find_stations(hass, station)
    results = []
    lines = []
    for ref in stations:
        result = await ref.hub.async_inspect(ref.station_id, part_id=part_id, lot_id=lot_id)
        defects = [d.class_name for d in result.defects]
        results.append(
            {
                "station": ref.info.name,
                "verdict": str(result.verdict),
                "defects": defects,
                "station_id": ref.station_id,
                "inspection_id": result.inspection_id,
                "new_incident_ids": list(result.new_incident_ids),
            }
        )
        found = (
            "found " + _join(sorted({d.replace("_", " ") for d in defects}))
            if defects
            else "the part passed"
        )
        lines.append(f"{ref.info.name}: {found}")
    return {"speech": "Inspected. " + "; ".join(lines) + ".", "inspections": results}


async def station_overview(
    hass: HomeAssistant, ref: StationRef, *, hours: float = 8, bucket_minutes: float = 15
) -> dict[str, Any]:
    """What the dashboard card shows for one station."""
    now = dt_util.utcnow()
    row = _status_row(ref)
    store = ref.hub.engine
    [today] = (await quality(ref, "today")).stations
    bucket = bucket_minutes * 60
    start = (now - timedelta(hours=hours)).timestamp() // bucket * bucket  # on the clock
    series = await store.rate_series(
        station_id=ref.station_id,
        since=datetime.fromtimestamp(start, tz=now.tzinfo),
        until=now,
        bucket=bucket,
    )
    last = ref.snapshot.last_incident or await store.last_incident(ref.station_id)
    report = report_data(last) if last else None
    entities = station_entities(hass, ref)
    return {
        **row,
        "device_id": entities.pop("device_id", None),
        "entities": entities,
        "defect_classes": list(ref.info.defects),
        "today": {
            "inspections": today.inspections,
            "failed": today.failed,
            "defect_rate_percent": today.defect_rate_percent,
            "yield_percent": today.yield_percent,
            "by_class": today.by_class,
        },
        "series": {
            "bucket_minutes": bucket_minutes,
            "points": [
                {
                    "start": b.start.isoformat(),
                    "inspections": b.inspections,
                    "failed": b.failed,
                    "incidents": b.incidents,
                    "rate": round(b.defect_rate, 4),
                }
                for b in series
            ],
        },
        "last_incident": report,
    }


def station_entities(hass: HomeAssistant, ref: StationRef) -> dict[str, Any]:
    """The station's entity ids by role (translation key), and its device id."""
    from homeassistant.helpers import entity_registry as er

    device = station_device(hass, ref.hub.entry.entry_id, ref.info.subentry_id)
    out: dict[str, Any] = {"device_id": device.id if device else None}
    if device is None:
        return out
    prefix = f"{ref.hub.entry.entry_id}_{ref.info.subentry_id}_"
    for entry in er.async_entries_for_device(er.async_get(hass), device.id):
        if entry.platform == DOMAIN and entry.unique_id.startswith(prefix):
            out[f"{entry.domain}.{entry.unique_id.removeprefix(prefix)}"] = entry.entity_id
    return out
