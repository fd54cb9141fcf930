"""The Edge Inspector LLM API: tools any conversation agent with LLM APIs can call.

Select "Edge Inspector" under the agent's "Control Home Assistant" options (the Ollama
integration, for one) and it can answer "how many scratches on line 2 since 6am?" from the
engine's store: exact figures, offline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import llm
from homeassistant.util import dt as dt_util
from homeassistant.util.json import JsonObjectType

from edge_inspector.quality import PERIOD_HELP

from . import answers
from .const import DOMAIN
from .validation import vol

API_NAME = "Edge Inspector"

STATION = "Station name, station id or production line (e.g. 'Press' or 'line 2'); omit for all."
PERIOD = f"Time range: {PERIOD_HELP}. Default: today."

type Answer = Callable[..., Awaitable[dict[str, Any]]]


class AnswerTool(llm.Tool):
    """A tool that validates its arguments and returns one of `answers`' dicts.

    Home Assistant 2026.11 (and later) reads which integration provides a tool, what the tool
    does (annotations) and takes a `ToolResult`; 2026.2 knows none of them, so each is used
    where the running release has it.
    """

    integration = DOMAIN

    def __init__(
        self,
        name: str,
        description: str,
        parameters: vol.Schema,
        answer: Answer,
        *,
        read_only: bool = True,
    ) -> None:
        self.name = name
        self.description = description
        self.parameters = parameters
        self._answer = answer
        if (annotations := getattr(llm, "ToolAnnotations", None)) is not None:
            # Nothing here deletes or reaches outside Home Assistant; inspect_now takes a
            # picture and writes an inspection, the rest only read the store.
            self.annotations = annotations(
                read_only=read_only, destructive=False, idempotent=read_only, open_world=False
            )

    async def async_call(
        self, hass: HomeAssistant, tool_input: llm.ToolInput, llm_context: llm.LLMContext
    ) -> llm.ToolResult | JsonObjectType:
        args = self.parameters(tool_input.tool_args)
        result: JsonObjectType = await self._answer(hass, **args)
        if hasattr(llm, "ToolResult"):
            return llm.ToolResult(data=result)
        return result


def _tools() -> list[llm.Tool]:
    return [
        AnswerTool(
            "edge_inspector_station_status",
            "Whether inspection stations are running (and why not), with today's inspections "
            "and defects.",
            vol.Schema({vol.Optional("station", description=STATION): str}),
            answers.station_status,
        ),
        AnswerTool(
            "edge_inspector_count_defects",
            "Count defects found, by defect class, station and time range, with the number "
            "of inspections and the defect rate. Use for 'how many ...' questions.",
            vol.Schema(
                {
                    vol.Optional("station", description=STATION): str,
                    vol.Optional(
                        "defect_class",
                        description="A defect class such as 'scratch'; omit for all defects.",
                    ): str,
                    vol.Optional("period", description=PERIOD): str,
                }
            ),
            answers.defect_count,
        ),
        AnswerTool(
            "edge_inspector_latest_incidents",
            "The latest defect incidents, newest first, with their VLM summaries.",
            vol.Schema(
                {
                    vol.Optional("station", description=STATION): str,
                    vol.Optional("limit", default=5): vol.All(
                        vol.Coerce(int), vol.Range(min=1, max=50)
                    ),
                    vol.Optional("period", description=PERIOD): str,
                }
            ),
            answers.latest_incidents,
        ),
        AnswerTool(
            "edge_inspector_incident_report",
            "One incident's full report: classification, summary, probable cause, fix steps "
            "with manual references, actions taken. Omit incident_id for the latest incident.",
            vol.Schema(
                {
                    vol.Optional("incident_id"): str,
                    vol.Optional("station", description=STATION): str,
                }
            ),
            answers.incident_report,
        ),
        AnswerTool(
            "edge_inspector_search_manual",
            "Search the equipment manuals; returns passages with file, section and page.",
            vol.Schema(
                {
                    vol.Required("query"): str,
                    vol.Optional("limit", default=3): vol.All(
                        vol.Coerce(int), vol.Range(min=1, max=10)
                    ),
                }
            ),
            answers.manual_search,
        ),
        AnswerTool(
            "edge_inspector_inspect_now",
            "Take a picture at a station now and inspect it; returns the verdict and defects.",
            vol.Schema(
                {
                    vol.Required("station", description=STATION): str,
                    vol.Optional("part_id"): str,
                    vol.Optional("lot_id"): str,
                }
            ),
            answers.inspect_now,
            read_only=False,
        ),
    ]


class EdgeInspectorAPI(llm.API):
    """Questions about visual inspection, answered from the engine's store."""

    async def async_get_api_instance(self, llm_context: llm.LLMContext) -> llm.APIInstance:
        stations = answers.all_stations(self.hass)
        lines = [
            "You answer questions about visual inspection on the production line with the "
            "edge_inspector tools. Figures come from the inspection store: quote them exactly "
            "and never guess counts.",
            f"Local time now: {dt_util.now():%Y-%m-%d %H:%M} ({self.hass.config.time_zone}).",
            "Stations:",
        ]
        for ref in stations:
            line = f" on {ref.info.line}" if ref.info.line else ""
            classes = ", ".join(ref.info.defects)
            lines.append(f"- {ref.info.name} (id {ref.station_id}{line}): finds {classes}")
        if not stations:
            lines.append("- none set up yet")
        return llm.APIInstance(
            api=self,
            api_prompt="\n".join(lines),
            llm_context=llm_context,
            tools=_tools(),
        )


@callback
def async_register(hass: HomeAssistant) -> Callable[[], None]:
    """Register the API (once per Home Assistant); the callable unregisters it."""
    return llm.async_register_api(hass, EdgeInspectorAPI(hass=hass, id=DOMAIN, name=API_NAME))
