"""The Edge Inspector LLM API: tools any conversation agent with LLM APIs can call.

Select "Edge Inspector" under the agent's "Control Home Assistant" options (the Ollama
integration, for one) and it can answer "how many scratches on line 2 since 6am?" from the
engine's store: exact figures, offline.

Made for small local models (a 1.5B Qwen on a CPU answers with it), which is why:
- tool names are short, distinct words (`defect_count`, `last_defect`): a model copies a short
  name right, also with the `<api>__` prefix Home Assistant puts before every tool's name when an
  agent has more than one API (before 2026.11; since, only before names that collide);
- each tool has few parameters, all of them plain words the answers understand ('Press',
  'scratches', 'since 6am');
- our intents are not offered again as tools by Assist's API (`intents.py`), so a model with
  both APIs sees each question's tool once;
- the prompt never changes while the stations do not, and the API carries Home Assistant's own
  date-and-time tool, so Home Assistant leaves the time (to the second) out of the system prompt:
  the system prompt comes before the tools in the model's prompt, and one changed character there
  made Ollama read the whole prompt again (about 25 s on two cores) for every question;
- every result starts with `speech`, the sentence to say, and holds no ids: a small model read
  out the hex id of an incident it was given.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import llm
from homeassistant.util.json import JsonObjectType

from edge_inspector.quality import PERIOD_HELP

from . import answers
from .const import DOMAIN
from .validation import vol

API_NAME = "Edge Inspector"

STATION = "Station name or line, e.g. 'Press'. Omit for all stations."
PERIOD = f"Time range: {PERIOD_HELP}. Default: today."
DEFECT_CLASS = "A defect class, e.g. 'scratch'. Omit for all defects."

# What the API says to the model, then the stations; nothing here may change from one question
# to the next (see above).
PROMPT = (
    "For every question about the inspection stations, their defects or inspections, call a "
    "tool; never answer from memory. Which tool:"
)
# Which tool answers what, in a user's words. Without it a 1.5B Qwen at Home Assistant's default
# temperature (0.8) called the tool for the five questions of issue 13 in 13 tries of 20, and
# made up "the last defect" (a scratch, at 14:30) at any temperature; with it, in 35 of 40.
# Since 2026.11 Home Assistant prefixes only names that collide, so the names hold.
WHICH_TOOL = (
    ("how many defects, scratches, ...", "defect_count"),
    ("the last defect", "last_defect"),
    ("is a station running", "station_status"),
    ("inspect a station now", "inspect_station"),
    ("why a defect happened, how to fix it", "incident_report"),
)
# Ollama reads a model's tool calls out of the text it writes, and a 1.5B model often wrote one
# the server does not read (`{"defect_count": {...}}`) until it was shown one (in the form of
# Qwen's template, which Home Assistant's default model uses). Only said to Ollama's models:
# others call tools natively. The name stays a placeholder: Home Assistant may prefix it.
OLLAMA_CALL = (
    "Write the call in this form only:\n"
    "<tool_call>\n"
    '{{"name": "<the tool\'s name>", "arguments": {arguments}}}\n'
    "</tool_call>"
)
SAY = "When its result comes, say the result's `speech`."

type Answer = Callable[..., Awaitable[dict[str, Any]]]

# Ids, which the dashboard card and the intents' data keep, are nothing to say.
_IDS = frozenset({"station_id", "incident_id", "inspection_id", "new_incident_ids"})


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_ids(item) for key, item in value.items() if key not in _IDS}
    if isinstance(value, list):
        return [_without_ids(item) for item in value]
    return value


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
        result: JsonObjectType = _without_ids(await self._answer(hass, **args))
        if hasattr(llm, "ToolResult"):
            return llm.ToolResult(data=result)
        return result


def _tools() -> list[llm.Tool]:
    return [
        AnswerTool(
            "defect_count",
            "How many defects (or scratches, dents, ...) were found, at a station, in a time "
            "range (default today).",
            vol.Schema(
                {
                    vol.Optional("station", description=STATION): str,
                    vol.Optional("defect_class", description=DEFECT_CLASS): str,
                    vol.Optional("period", description=PERIOD): str,
                }
            ),
            answers.defect_count,
        ),
        AnswerTool(
            "last_defect",
            "What was the last defect found (at a station): what, where and when.",
            vol.Schema({vol.Optional("station", description=STATION): str}),
            partial(answers.latest_incidents, limit=1),
        ),
        AnswerTool(
            "station_status",
            "Is a station running? Its status (and why it is not running), with today's defects.",
            vol.Schema({vol.Optional("station", description=STATION): str}),
            answers.station_status,
        ),
        AnswerTool(
            "inspect_station",
            "Inspect a station now: take a picture and look for defects.",
            vol.Schema({vol.Required("station", description=STATION): str}),
            answers.inspect_now,
            read_only=False,
        ),
        AnswerTool(
            "incident_report",
            "A defect's report: its probable cause and how to fix it. Without an incident_id: "
            "the last defect's.",
            vol.Schema(
                {
                    vol.Optional("station", description=STATION): str,
                    vol.Optional("incident_id"): str,
                }
            ),
            answers.incident_report,
        ),
        AnswerTool(
            "search_manual",
            "Look something up in the equipment manuals.",
            vol.Schema({vol.Required("query", description="What to look up."): str}),
            answers.manual_search,
        ),
        _date_time_tool(),
    ]


def _date_time_tool() -> llm.Tool:
    """Home Assistant's own tool that tells the date and time.

    While an agent's tools include one named `...GetDateTime`, Home Assistant leaves the time
    out of the system prompt (Assist's API carries it for the same reason). Since 2026.11 its
    instances are equal, so an agent with Assist's API and ours is offered it once.
    """
    try:
        from homeassistant.components.llm.llm import GetDateTimeTool
    except ImportError:  # before the `llm` integration (2026.2): the helper module's
        return llm.GetDateTimeTool()  # type: ignore[attr-defined,no-any-return,unused-ignore]
    return GetDateTimeTool()


class EdgeInspectorAPI(llm.API):
    """Questions about visual inspection, answered from the engine's store."""

    async def async_get_api_instance(self, llm_context: llm.LLMContext) -> llm.APIInstance:
        stations = answers.all_stations(self.hass)
        lines = [PROMPT, *(f"- {asked}: {tool}" for asked, tool in WHICH_TOOL)]
        if llm_context.platform == "ollama":
            example = {"station": stations[0].info.name} if stations else {}
            lines.append(OLLAMA_CALL.format(arguments=json.dumps(example)))
        lines += [SAY, "Inspection stations:"]
        for ref in stations:
            line = f" on {ref.info.line}" if ref.info.line else ""
            classes = ", ".join(ref.info.defects)
            lines.append(f"- {ref.info.name}{line}: finds {classes}")
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
