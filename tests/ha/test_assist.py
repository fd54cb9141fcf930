"""Assist: the Edge Inspector LLM API's tools and the sentences of the default agent, answered
from the engine's store by a real Home Assistant's conversation and intent handling."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from datetime import datetime, timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import intent, llm
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.edge_inspector import answers
from custom_components.edge_inspector.const import DOMAIN
from custom_components.edge_inspector.intents import parse_text, split_period

# Imported before a test freezes the clock (the integration imports the engine when an entry is
# set up): pydantic builds no model in a module imported while freezegun's datetime stands in
# for datetime, and the engine imports pydantic models (ollama's).
from edge_inspector import engine as _engine  # noqa: F401
from edge_inspector.events import (
    BoundingBox,
    Incident,
    IncidentReport,
    ModelInfo,
    VlmResult,
    VlmStatus,
)
from tests.ha_release import station_object_id

from .test_integration import set_up_station

PRESS = station_object_id("Press", area="Line 2")  # its entities' id prefix

# Home Assistant's date-and-time tool, which our API carries: the `llm` integration's since
# there is one, the helper module's before (2026.2)
_DATE_TIME_TOOL = "llm__GetDateTime" if find_spec("homeassistant.components.llm") else "GetDateTime"

MODEL = ModelInfo(name="demo.pt", sha256="0" * 64)
NOW = datetime(2026, 11, 27, 9, 30)  # local time; the shifts start 06:00, 14:00, 22:00


def _incident(n: int, cls: str, when: datetime, sid: str, summary: str | None = None) -> Incident:
    vlm = None
    if summary:
        vlm = VlmResult(
            status=VlmStatus.DONE,
            model="qwen2.5vl:7b",
            prompt_version="t",
            updated_at=dt_util.as_utc(when),
            report=IncidentReport(
                summary=summary,
                probable_cause="worn guide rail",
                fix_steps=("Stop the press", "Replace the guide rail"),
            ),
        )
    return Incident(
        incident_id=f"inc{n}",
        station_id=sid,
        station_name="Press",
        created_at=dt_util.as_utc(when),
        inspection_id=f"insp{n}",
        defect_class=cls,
        confidence=0.87,
        boxes=(BoundingBox(x1=1, y1=2, x2=30, y2=40),),
        detections=(),
        model=MODEL,
        latency_ms=10.0,
        part_id=f"P{n}",
        vlm=vlm,
    )


@pytest.fixture
async def station(
    hass: HomeAssistant, tmp_path: Path, camera_file: Path, freezer: FrozenDateTimeFactory
) -> tuple[MockConfigEntry, str]:
    """Press on Line 2 with a history (`set_up_press`)."""
    return await set_up_press(hass, tmp_path, freezer)


async def set_up_press(
    hass: HomeAssistant, tmp_path: Path, freezer: FrozenDateTimeFactory
) -> tuple[MockConfigEntry, str]:
    """Press on Line 2 (its camera: `camera_file`) at 09:30 with a history: scratches at 05:50,
    06:10, 09:00, a dent at 09:20, a scratch yesterday. The entry and the station's id."""
    await hass.config.async_update(time_zone="Europe/Berlin")
    freezer.move_to(dt_util.as_utc(NOW.replace(tzinfo=dt_util.get_default_time_zone())))
    assert await _setup_conversation(hass)
    entry, _device = await set_up_station(hass, tmp_path)
    hub = entry.runtime_data
    sid = next(iter(hub.stations))
    tz = dt_util.get_default_time_zone()
    day = NOW.replace(tzinfo=tz)
    history = [
        _incident(1, "scratch", day - timedelta(days=1), sid),
        _incident(2, "scratch", day.replace(hour=5, minute=50), sid),
        _incident(3, "scratch", day.replace(hour=6, minute=10), sid),
        _incident(4, "scratch", day.replace(hour=9, minute=0), sid),
        _incident(5, "dent", day.replace(hour=9, minute=20), sid, summary="A dent near the hole."),
    ]
    for incident in history:
        await hub.engine.store.add_incident(incident)
    return entry, sid


async def _setup_conversation(hass: HomeAssistant) -> bool:
    from homeassistant.setup import async_setup_component

    return await async_setup_component(hass, "conversation", {})


async def _ask(hass: HomeAssistant, text: str) -> str:
    result = await conversation.async_converse(
        hass, text, None, Context(), language="en", agent_id=conversation.HOME_ASSISTANT_AGENT
    )
    speech = result.response.speech["plain"]["speech"]
    return str(speech)


def _local(hour: int, minute: int = 0) -> datetime:
    return NOW.replace(hour=hour, minute=minute, tzinfo=dt_util.get_default_time_zone())


def test_a_time_range_is_split_off_what_is_asked() -> None:
    # the range itself is read by the engine (tests/engine/test_quality.py)
    assert split_period("scratches on line 2 since 6am") == ("scratches on line 2", "since 6am")
    assert split_period("defects in the last hour on press") == (
        "defects on press",
        "the last hour",
    )


def _tool_data(content: dict[str, Any]) -> dict[str, Any]:
    """A tool's result as Home Assistant's Ollama agent sends it to the model: since 2026.11
    wrapped as {"data": ..., "error": false}, before as the bare result."""
    if set(content) == {"data", "error"}:
        assert content["error"] is False, content
        return dict(content["data"])
    return content


async def test_the_llm_api_tools_answer_from_the_store(
    hass: HomeAssistant, station: tuple[MockConfigEntry, str]
) -> None:
    _entry, sid = station
    apis = {api.id: api.name for api in llm.async_get_apis(hass)}
    assert apis[DOMAIN] == "Edge Inspector"
    context = llm.LLMContext(
        platform="ollama",
        context=Context(),
        language="en",
        assistant="conversation",
        device_id=None,
    )
    api = await llm.async_get_api(hass, DOMAIN, context)
    assert api.api_prompt.endswith("\n- Press on Line 2: finds crack, dent, scratch, spot")
    assert sid not in api.api_prompt  # an id is nothing to say
    # Ollama's models are shown how a call is written (the server reads calls out of the text);
    # models that call tools natively are not
    call = '{"name": "<the tool\'s name>", "arguments": {"station": "Press"}}'
    assert call in api.api_prompt
    native = await llm.async_get_api(
        hass, DOMAIN, dataclasses.replace(context, platform="openai_conversation")
    )
    assert "<tool_call>" not in native.api_prompt and "speech" in native.api_prompt
    names = {tool.name for tool in api.tools}
    assert names == {
        "defect_count",
        "last_defect",
        "station_status",
        "inspect_station",
        "incident_report",
        "search_manual",
        _DATE_TIME_TOOL,
    }
    # the prompt says which tool answers what, by the names the model is offered
    routed = re.findall(
        r"^- [^:\n]+: (\w+)$", api.api_prompt.split("Inspection stations:")[0], re.M
    )
    assert routed and set(routed) <= names, routed

    async def call(name: str, **args: Any) -> dict[str, Any]:
        result = await api.async_call_tool(llm.ToolInput(tool_name=name, tool_args=args))
        # a ToolResult since Home Assistant 2026.11 (never an error here), a dict before
        assert not getattr(result, "error", False), result
        return dict(getattr(result, "data", result))

    # "how many scratches on line 2 since 6am?"
    answer = await call(
        "defect_count", station="line 2", defect_class="scratches", period="since 6am"
    )
    assert answer["total"] == 2
    assert answer["speech"] == "2 scratches on Press since 06:00."
    assert next(iter(answer)) == "speech"  # what to say comes first
    assert answer["stations"][0]["by_class"] == {"scratch": 2}
    assert answer["since"] == _local(6).isoformat()
    today = await call("defect_count")
    assert today["total"] == 4
    assert today["speech"] == "4 defects on all stations today: 3 scratches and 1 dent."
    shift = await call("defect_count", period="this shift")
    assert shift["total"] == 3
    hour = await call("defect_count", period="last hour", defect_class="dent")
    assert (hour["total"], hour["speech"]) == (1, "1 dent on all stations the last hour.")
    yesterday = await call("defect_count", period="yesterday")
    assert yesterday["total"] == 1

    latest = await call("last_defect")
    when = dt_util.as_utc(_local(9, 20)).isoformat()
    assert [(i["defect_class"], i["created_at"]) for i in latest["incidents"]] == [("dent", when)]
    assert latest["speech"].startswith("The last defect was a dent on Press at 09:20, part P5.")
    on_press = await call("last_defect", station="Press")
    assert on_press["speech"] == latest["speech"]
    report = await call("incident_report")
    assert (report["defect_class"], report["part_id"]) == ("dent", "P5")
    assert report["report"]["fix_steps"] == ["Stop the press", "Replace the guide rail"]
    assert "Probable cause: worn guide rail. Fix: 1. Stop the press" in report["speech"]
    assert next(iter(report)) == "speech"
    older = await call("incident_report", incident_id="inc2")
    assert "No report" in older["speech"]

    status = await call("station_status", station="Press")
    row = status["stations"][0]
    assert row["station"] == "Press" and row["running"] is True and row["defects_today"] == 4
    assert status["speech"] == "Press is running, 4 defects today."

    inspected = await call("inspect_station", station="press")
    result = inspected["inspections"][0]
    assert result["verdict"] == "fail" and "Press: found" in inspected["speech"]
    counted = row["inspections_today"]
    for _ in range(100):  # the station records the inspection just after answering
        row = (await answers.station_status(hass))["stations"][0]
        if row["inspections_today"] > counted:
            break
        await hass.async_add_executor_job(time.sleep, 0.05)  # the test's clock is frozen
    assert row["inspections_today"] == counted + 1

    # no ids for the model to read out (the card and the intents' data keep them)
    said = json.dumps([answer, latest, report, status, inspected])
    assert sid not in said and "inc5" not in said, said
    assert not {"station_id", "incident_id", "inspection_id"} & set(re.findall(r'"(\w+)":', said))

    # the date and time come from Home Assistant's own tool, not from the prompt
    clock = await call(_DATE_TIME_TOOL)
    clock = clock.get("result", clock)  # 2026.2 wraps it in {"success": ..., "result": ...}
    assert (clock["date"], clock["time"]) == ("2026-11-27", "09:30:00")

    # wrong arguments are errors the model can read, never guesses
    with pytest.raises(HomeAssistantError, match="no station called 'line 9'"):
        await call("defect_count", station="line 9")
    with pytest.raises(HomeAssistantError, match="no station looks for 'bubbles'"):
        await call("defect_count", defect_class="bubbles")
    with pytest.raises(HomeAssistantError, match="no equipment manuals"):
        await call("search_manual", query="guide rail")
    with pytest.raises(HomeAssistantError, match="no incident 'nope'"):
        await call("incident_report", incident_id="nope")


async def test_an_agent_with_assists_api_and_ours_is_offered_each_tool_once(
    hass: HomeAssistant, station: tuple[MockConfigEntry, str]
) -> None:
    """Assist's API leaves our intents out (2026.2 offered every intent as a tool, and a small
    model mixed them up with ours); the date-and-time tool both APIs carry comes once where Home
    Assistant merges equal tools (2026.11), and only there are names left unprefixed."""
    from homeassistant.setup import async_setup_component

    merged_clock = find_spec("homeassistant.components.llm") is not None
    if merged_clock:
        assert await async_setup_component(hass, "llm", {})
    context = llm.LLMContext(
        platform="ollama",
        context=Context(),
        language="en",
        assistant="conversation",
        device_id=None,
    )
    api = await llm.async_get_api(hass, [llm.LLM_API_ASSIST, DOMAIN], context)
    names = [tool.name for tool in api.tools]
    assert not [name for name in names if "EdgeInspector" in name], names
    ours = [name for name in names if name.startswith("edge-inspector__") or "__" not in name]
    assert sorted(name.removeprefix("edge-inspector__") for name in ours) == sorted(
        [
            "defect_count",
            "last_defect",
            "station_status",
            "inspect_station",
            "incident_report",
            "search_manual",
            *([] if merged_clock else ["GetDateTime"]),
        ]
    ), names
    assert sum(name.endswith("GetDateTime") for name in names) == (1 if merged_clock else 2)


async def test_sentences_get_exact_answers_from_the_default_agent(
    hass: HomeAssistant, station: tuple[MockConfigEntry, str]
) -> None:
    entry, _sid = station
    asked = {
        "How many scratches on line 2 since 6am?": "2 scratches on Press since 06:00.",
        "how many defects today": "4 defects on all stations today: 3 scratches and 1 dent.",
        "how many dents were found this shift": "1 dent on all stations this shift.",
        "How many defects did we have on Press in the last hour": (
            "2 defects on Press the last hour: 1 dent and 1 scratch."
        ),
        "how many scratches yesterday": "1 scratch on all stations yesterday.",
        "What was the last defect on press?": (
            "The last defect was a dent on Press at 09:20, part P5. A dent near the hole."
        ),
        "is press running": "Press is running, 4 defects today.",
        "are all stations running": "Press is running, 4 defects today.",
        "what's the status of line 2": "Press is running, 4 defects today.",
    }
    for question, expected in asked.items():
        assert await _ask(hass, question) == expected, question

    # the same intents answer with data, for agents and intent_script
    response = await intent.async_handle(
        hass,
        DOMAIN,
        "EdgeInspectorDefectCount",
        {"station": {"value": "Press"}, "period": {"value": "since 6am"}},
    )
    assert response.response_type is intent.IntentResponseType.QUERY_ANSWER
    assert response.speech_slots["total"] == 3
    assert response.speech_slots["stations"][0]["by_class"] == {"scratch": 2, "dent": 1}
    with pytest.raises(intent.IntentHandleError, match="no station called"):
        await intent.async_handle(
            hass, DOMAIN, "EdgeInspectorStationStatus", {"station": {"value": "Lathe"}}
        )

    # questions that are not ours still reach Home Assistant's own intents
    other = await _ask(hass, "how many lights are on")
    assert "defect" not in other and "Press" not in other

    # inspect now: a new inspection (the camera shows a defect), the defect count changes
    before = await answers.station_status(hass)
    said = await _ask(hass, "inspect press now")
    assert said.startswith("Inspected. Press: found")
    counted = before["stations"][0]["inspections_today"]
    for _ in range(100):  # recorded just after the answer
        after = await answers.station_status(hass)
        if after["stations"][0]["inspections_today"] > counted:
            break
        await hass.async_add_executor_job(time.sleep, 0.05)
    assert after["stations"][0]["inspections_today"] == counted + 1

    # the slots are read from the words the sentence matched
    assert parse_text(hass, "EdgeInspectorDefectCount", "how many cracks at Press today?") == {
        "period": "today",
        "station": "Press",
        "defect_class": "crack",
    }

    # sentences go away with the entry (the stations they name may change)
    assert await hass.config_entries.async_unload(entry.entry_id)
    gone = await _ask(hass, "is press running")
    assert "Press is running" not in gone


async def test_switched_off_and_unknown_stations_are_said_plainly(
    hass: HomeAssistant, station: tuple[MockConfigEntry, str]
) -> None:
    await hass.services.async_call(
        "switch", "turn_off", {"entity_id": f"switch.{PRESS}_inspection"}, blocking=True
    )
    await hass.async_block_till_done()
    assert await _ask(hass, "is press running") == "Press is switched off, 4 defects today."
    assert await _ask(hass, "how many defects on press yesterday") == (
        "1 defect on Press yesterday: 1 scratch."
    )


async def test_shift_start_times_come_from_the_options(
    hass: HomeAssistant, station: tuple[MockConfigEntry, str]
) -> None:
    from homeassistant.data_entry_flow import FlowResultType

    entry, _sid = station
    flow = await hass.config_entries.options.async_init(entry.entry_id)
    flow = await hass.config_entries.options.async_configure(flow["flow_id"], {"shifts": "7am"})
    assert flow["errors"] == {"shifts": "invalid_shifts"}
    flow = await hass.config_entries.options.async_configure(
        flow["flow_id"], {"shifts": "07:00, 19:00"}
    )
    assert flow["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()  # the entry reloads with the new options
    answer = await answers.defect_count(hass, period="this shift")
    assert answer["since"] == _local(7).isoformat()
    assert answer["total"] == 2  # the scratch at 09:00 and the dent at 09:20
    assert await _ask(hass, "how many defects last shift") == (
        "2 defects on all stations the last shift: 2 scratches."
    )


async def test_home_assistants_ollama_agent_answers_with_the_edge_inspector_tools(
    hass: HomeAssistant, station: tuple[MockConfigEntry, str], socket_enabled: None
) -> None:
    """The Ollama integration's conversation agent, with the Edge Inspector API ticked, asks
    the (fake) model; the model calls our tool and words the answer from its result."""
    from homeassistant.config_entries import ConfigSubentryData

    from tests.ollama_server import FakeOllama, Reply

    seen: list[dict[str, Any]] = []

    def model(body: dict[str, Any]) -> Reply:
        seen.append(body)
        results = [m for m in body["messages"] if m.get("role") == "tool"]
        if not results:
            return Reply.tools(
                (
                    "defect_count",
                    {"station": "line 2", "defect_class": "scratch", "period": "since 6am"},
                )
            )
        data = _tool_data(json.loads(results[-1]["content"]))
        return Reply(content=f"{data['total']} scratches on line 2 since 6 am.")

    server = FakeOllama()
    server.script = model
    await server.start()
    try:
        entry = MockConfigEntry(
            domain="ollama",
            data={"url": server.url},
            version=3,
            minor_version=3,
            subentries_data=[
                ConfigSubentryData(
                    data={"model": "qwen2.5vl:7b", "llm_hass_api": [DOMAIN]},
                    subentry_type="conversation",
                    title="Ollama Conversation",
                    unique_id=None,
                )
            ],
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        agent = next(
            s.entity_id for s in hass.states.async_all("conversation") if "ollama" in s.entity_id
        )
        result = await conversation.async_converse(
            hass, "How many scratches on line 2 since 6am?", None, Context(), agent_id=agent
        )
        assert result.response.speech["plain"]["speech"] == "2 scratches on line 2 since 6 am."
        # the model was offered our tools and the API's prompt, and got the store's figures
        offered = {t["function"]["name"] for t in seen[0]["tools"]}
        assert "defect_count" in offered
        system = seen[0]["messages"][0]["content"]
        assert "- Press on Line 2: finds crack, dent, scratch, spot" in system
        # no time in the system prompt, which the model reads before the tools: Home Assistant
        # leaves it out while the tools tell it, and the model's prompt cache holds
        assert "Current time" not in system and "09:30" not in system
        tool_result = _tool_data(
            json.loads(next(m for m in seen[1]["messages"] if m.get("role") == "tool")["content"])
        )
        assert tool_result["total"] == 2
        assert tool_result["speech"] == "2 scratches on Press since 06:00."
        await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await server.stop()
