"""Assist without an LLM: intents for the common questions, and the sentences that reach them.

Four intents are registered with Home Assistant's intent helper (so `intent_script` and other
callers of `intent.async_handle` can use them too):

- `EdgeInspectorDefectCount` (slots `station`, `defect_class`, `period`)
- `EdgeInspectorLastDefect` (slot `station`)
- `EdgeInspectorStationStatus` (slot `station`)
- `EdgeInspectorInspect` (slot `station`)

The integration ships English sentences for them and registers them with the default
conversation agent as sentence triggers: "how many scratches on line 2 since 6am", "what was
the last defect on Press", "is Press running", "inspect Press now". The sentences are built from
the configured stations' names, ids and lines and their defect classes (no free wildcards), so
they never catch questions meant for other intents ("how many lights are on"); they are rebuilt
whenever the stations change (the entry reloads). The station, defect class and time range are
then read from the words by the same rules the LLM tools use (`answers`).

The intents are not LLM tools: Assist's LLM API (before 2026.11) offered every intent whose
handler names no entity domain, so an agent with Assist's API and ours saw each question twice
under near names, and a small model mixed them up (`assist__EdgeInspectorCountDefects`). Our
handlers say they act on no entity domain (`platforms` is empty), which Assist's API leaves out;
models use the Edge Inspector LLM API's tools (`llm_api.py`), which answer the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import intent

from . import answers
from .const import DOMAIN
from .hub import EdgeInspectorHub
from .validation import vol

if TYPE_CHECKING:
    from hassil.recognize import RecognizeResult
    from homeassistant.components.conversation import ConversationInput

_LOGGER = logging.getLogger(__name__)

INTENT_DEFECT_COUNT = "EdgeInspectorDefectCount"
INTENT_LAST_DEFECT = "EdgeInspectorLastDefect"
INTENT_STATION_STATUS = "EdgeInspectorStationStatus"
INTENT_INSPECT = "EdgeInspectorInspect"

_DEFECT_WORDS = (
    "defect",
    "defects",
    "incident",
    "incidents",
    "problem",
    "problems",
    "reject",
    "rejects",
    "fault",
    "faults",
)
_PERIODS = (
    "[(so far|for|in|during|over)] (today|yesterday|this week|[the] (this|current|last|previous) "
    "shift|[the] (last|past) [{n}] (hour|hours|minute|minutes|day|days)|since {time})"
)
_PERIOD = re.compile(
    r"\b(?:(?:so far|for|in|during|over)\s+)?(today|yesterday|this week|"
    r"(?:this|the current|the last|the previous|last|previous|current)\s+shift|"
    r"(?:the\s+)?(?:last|past)\s+(?:\d+\s+|a\s+|an\s+|one\s+|two\s+|three\s+|four\s+|five\s+|"
    r"six\s+|eight\s+|ten\s+|twelve\s+)?(?:hours?|minutes?|mins?|days?)|"
    r"since\s+\d{1,2}(?:[:.h]\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.|o'?clock)?)(?=\s|$)"
)


def _words(text: str) -> str:
    """Text as hassil matches it: lower case, only letters, digits and single spaces."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def vocabulary(
    hass: HomeAssistant, refs: list[answers.StationRef] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """What the sentences may name: station words -> station name, class words -> class."""
    stations: dict[str, str] = {}
    classes: dict[str, str] = {}
    for ref in answers.all_stations(hass) if refs is None else refs:
        for name in (ref.info.name, ref.station_id, ref.info.line or ""):
            if words := _words(name):
                stations.setdefault(words, ref.info.line if name == ref.info.line else name)
        for cls in ref.info.defects:
            words = _words(cls)
            classes[words] = classes[answers.plural(words)] = cls
    return stations, classes


def sentences(
    hass: HomeAssistant, refs: list[answers.StationRef] | None = None
) -> dict[str, list[str]]:
    """The sentence templates for these stations (default: every loaded station)."""
    station_words, class_words = vocabulary(hass, refs)
    if not station_words:
        return {}
    st = "(" + "|".join(sorted(station_words, key=len, reverse=True)) + ")"
    cls = "(" + "|".join(sorted({*class_words, *_DEFECT_WORDS}, key=len, reverse=True)) + ")"
    defect = "(" + "|".join(_DEFECT_WORDS) + ")"
    where = f"(on|at|for|from|in) [the] {st} [station]"
    filler = (
        "[(are|were) there|did we (have|find|get|see)|have we (had|found|seen)|"
        "(were|have been|got) (found|detected|caught)]"
    )
    return {
        INTENT_DEFECT_COUNT: [
            f"how many {cls} {filler} [{where}] [{_PERIODS}]",
            f"how many {cls} {filler} {_PERIODS} {where}",
            f"how many {cls} [{filler}] (on|at|in) {st} {_PERIODS}",
        ],
        INTENT_LAST_DEFECT: [
            f"(what|when|where) was the (last|latest|most recent|previous) {defect} [{where}]",
            f"[show me] [the] (last|latest|most recent) {defect} [{where}]",
        ],
        INTENT_STATION_STATUS: [
            f"(is|are) [the] {st} [station] (running|working|inspecting|on|up|ok|okay)",
            "(is|are) [all] [the] [inspection] stations (running|working|ok|okay)",
            f"[what is|what's] [the] status of [the] {st} [station]",
            "[what is|what's] [the] (inspection|station) status",
            f"how (is|are) [the] {st} [station] doing",
        ],
        INTENT_INSPECT: [
            f"(inspect|check) [the] {st} [station] [now]",
            f"(run|start|do|take) [an|a] inspection (on|at|of|for) [the] {st} [station] [now]",
        ],
    }


def split_period(text: str) -> tuple[str, str | None]:
    """A time-range phrase out of a question: (the rest, the phrase or None)."""
    match = _PERIOD.search(text)
    if match is None:
        return text, None
    rest = (text[: match.start()] + " " + text[match.end() :]).strip()
    return " ".join(rest.split()), match.group(1)


def parse_text(hass: HomeAssistant, intent_type: str, text: str) -> dict[str, str]:
    """The slots a matched sentence names: station, defect class, time range."""
    station_words, class_words = vocabulary(hass)
    rest, period = split_period(" ".join(re.sub(r"[?!,]", " ", text.lower()).split()))
    rest = _words(rest)
    slots: dict[str, str] = {}
    if period and intent_type == INTENT_DEFECT_COUNT:
        slots["period"] = period
    for words in sorted(station_words, key=len, reverse=True):
        if re.search(rf"\b{re.escape(words)}\b", rest):
            slots["station"] = station_words[words]
            rest = re.sub(rf"\b{re.escape(words)}\b", " ", rest)
            break
    if intent_type == INTENT_DEFECT_COUNT:
        for words in sorted(class_words, key=len, reverse=True):
            if re.search(rf"\b{re.escape(words)}\b", rest):
                slots["defect_class"] = class_words[words]
                break
    return slots


class _AnswerIntent(intent.IntentHandler):
    """An intent answered by one of `answers`' functions."""

    slots: tuple[str, ...] = ("station",)
    platforms: set[str] | None = set()  # noqa: RUF012 (read only: no entity domain, see above)

    @callback
    def async_can_handle(self, intent_obj: intent.Intent) -> bool:
        """Any caller may ask (Home Assistant reads `platforms` here as the callers' names)."""
        return True

    @property
    def slot_schema(self) -> dict[Any, Any]:
        return {vol.Optional(name): str for name in self.slots}

    async def _answer(self, hass: HomeAssistant, **slots: str) -> dict[str, Any]:
        raise NotImplementedError

    async def async_handle(self, intent_obj: intent.Intent) -> intent.IntentResponse:
        slots = self.async_validate_slots(intent_obj.slots)
        values = {name: slots[name]["value"] for name in self.slots if name in slots}
        response = intent_obj.create_response()
        try:
            data = await self._answer(intent_obj.hass, **values)
        except answers.AnswerError as exc:
            raise intent.IntentHandleError(str(exc)) from exc
        response.response_type = intent.IntentResponseType.QUERY_ANSWER
        response.async_set_speech(data["speech"])
        response.async_set_speech_slots(data)
        return response


class DefectCountIntent(_AnswerIntent):
    intent_type = INTENT_DEFECT_COUNT
    description = "Counts defects by class, station and time range (default: today)"
    slots = ("station", "defect_class", "period")

    async def _answer(self, hass: HomeAssistant, **slots: str) -> dict[str, Any]:
        return await answers.defect_count(hass, **slots)


class LastDefectIntent(_AnswerIntent):
    intent_type = INTENT_LAST_DEFECT
    description = "Tells the last defect found (on a station, or anywhere)"

    async def _answer(self, hass: HomeAssistant, **slots: str) -> dict[str, Any]:
        return await answers.latest_incidents(hass, limit=1, **slots)


class StationStatusIntent(_AnswerIntent):
    intent_type = INTENT_STATION_STATUS
    description = "Tells whether inspection stations are running, and today's defects"

    async def _answer(self, hass: HomeAssistant, **slots: str) -> dict[str, Any]:
        return await answers.station_status(hass, **slots)


class InspectIntent(_AnswerIntent):
    intent_type = INTENT_INSPECT
    description = "Takes a picture at an inspection station now and inspects it"

    async def _answer(self, hass: HomeAssistant, **slots: str) -> dict[str, Any]:
        if "station" not in slots:
            raise answers.AnswerError("say which station to inspect")
        return await answers.inspect_now(hass, station=slots["station"])


HANDLERS: tuple[type[_AnswerIntent], ...] = (
    DefectCountIntent,
    LastDefectIntent,
    StationStatusIntent,
    InspectIntent,
)


@callback
def async_setup_intents(hass: HomeAssistant) -> None:
    """Register the intents (once per Home Assistant run)."""
    for handler in HANDLERS:
        intent.async_register(hass, handler())


def _trigger(
    hass: HomeAssistant, intent_type: str
) -> Callable[[ConversationInput, RecognizeResult], Awaitable[str | None]]:
    async def respond(user_input: ConversationInput, result: RecognizeResult) -> str | None:
        slots = parse_text(hass, intent_type, user_input.text)
        _LOGGER.debug("%r: %s %s", user_input.text, intent_type, slots)
        try:
            response = await intent.async_handle(
                hass,
                DOMAIN,
                intent_type,
                {name: {"value": value} for name, value in slots.items()},
                text_input=user_input.text,
                context=user_input.context,
                language=user_input.language,
                device_id=user_input.device_id,
            )
        except intent.IntentHandleError as exc:
            return f"Sorry, {exc}."
        except intent.IntentError as exc:
            _LOGGER.warning("%r could not be answered: %s", user_input.text, exc)
            return "Sorry, Edge Inspector could not answer that."
        speech = response.speech.get("plain", {}).get("speech", "")
        return str(speech)

    return respond


def _register_trigger(
    hass: HomeAssistant,
    templates: list[str],
    respond: Callable[[ConversationInput, RecognizeResult], Awaitable[str | None]],
) -> Callable[[], None]:
    """Sentences for the default agent, with the API of the running release: since 2026.3
    `register_trigger(sentences, trigger_callback)`; before, one `TriggerDetails` argument.
    (Drop the old branch when the oldest supported release is 2026.3 or later.)"""
    from homeassistant.components.conversation import trigger
    from homeassistant.components.conversation.agent_manager import get_agent_manager

    manager = get_agent_manager(hass)
    code = manager.register_trigger.__code__  # its parameters' names (not its annotations,
    # which name types imported for type checking only)
    if "trigger_callback" in code.co_varnames[: code.co_argcount]:
        return manager.register_trigger(sentences=templates, trigger_callback=respond)
    details = trigger.TriggerDetails  # type: ignore[attr-defined,unused-ignore]
    return manager.register_trigger(details(templates, respond))  # type: ignore[no-any-return,call-arg,unused-ignore]


@callback
def async_register_sentences(hass: HomeAssistant, hub: EdgeInspectorHub) -> Callable[[], None]:
    """Make the default conversation agent answer the sentences about the hub's stations; the
    callable removes them."""
    removers = [
        _register_trigger(hass, templates, _trigger(hass, intent_type))
        for intent_type, templates in sentences(
            hass, [answers.StationRef(hub, info) for info in hub.stations.values()]
        ).items()
    ]

    @callback
    def remove() -> None:
        for remover in removers:
            remover()

    return remove
