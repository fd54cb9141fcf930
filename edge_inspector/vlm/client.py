"""Ollama through its official client, with the failure modes sorted into two kinds.

`VlmUnavailableError`: the server is down, slow, overloaded, or lacks the model. The incident
waits and is retried later; the circuit breaker counts these.
`VlmInvalidAnswerError`: the server answered, but not with what was asked (broken JSON under
`format`). Retried once by the agent, then recorded with the raw text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import httpx
import numpy as np
import ollama

from ..config import VlmConfig
from ..errors import EdgeInspectorError

__all__ = [
    "ChatTurn",
    "ModelProfile",
    "OllamaVlm",
    "ToolCall",
    "ToolsUnsupportedError",
    "VlmInvalidAnswerError",
    "VlmUnavailableError",
    "parse_text_tool_calls",
]

_LOGGER = logging.getLogger(__name__)


class VlmUnavailableError(EdgeInspectorError):
    """Ollama cannot serve the request now (down, hanging, 5xx, model missing)."""


class VlmModelMissingError(VlmUnavailableError):
    """The Ollama server answers but does not have the configured model."""


class VlmInvalidAnswerError(EdgeInspectorError):
    """The model answered with something that does not fit what was asked."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class ToolsUnsupportedError(EdgeInspectorError):
    """The server refused tools for this model."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call as the model wrote it: `arguments` may be anything (an object when well
    formed); `raw` is the call's text, kept for the record when it is not."""

    name: str
    arguments: Any
    raw: str = ""

    def argument_object(self) -> dict[str, Any] | None:
        """The arguments as an object: as given, or decoded from a JSON string (as some
        Ollama-compatible servers send them); None when they are neither."""
        args = self.arguments
        if args is None:
            return {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        return dict(args) if isinstance(args, Mapping) else None


@dataclass(slots=True)
class ChatTurn:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    done_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What the model can do: `capabilities` as /api/show lists them, or as found out when the
    server does not say (older servers): `source` tells which."""

    name: str
    capabilities: tuple[str, ...] | None
    source: str = "server"  # server, or found: the template, the model's details, a probe

    @property
    def tools(self) -> bool:
        return self.capabilities is None or "tools" in self.capabilities

    @property
    def vision(self) -> bool:
        """Images are sent only to a model known to see them."""
        return self.capabilities is not None and "vision" in self.capabilities


_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_text_tool_calls(content: str, names: Collection[str] = ()) -> list[ToolCall]:
    """Tool calls a model wrote as text instead of `tool_calls` (a known small-model habit):
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, a fenced or bare JSON object
    or list of such objects, or `{"<tool>": {...arguments}, ...}` naming tools in `names`."""
    candidates = _TOOL_TAG.findall(content) or _FENCE.findall(content) or [content.strip()]
    calls: list[ToolCall] = []
    for text in candidates:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, ValueError):
            continue
        for entry in data if isinstance(data, list) else [data]:
            if isinstance(entry, Mapping):
                calls.extend(_text_call(entry, names, text))
    return calls


def _text_call(entry: Mapping[str, Any], names: Collection[str], text: str) -> list[ToolCall]:
    item = entry["function"] if isinstance(entry.get("function"), Mapping) else entry
    name = item.get("name")
    if isinstance(name, str) and name:
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args)
        return [ToolCall(name, args, raw=text[:2000])]
    # {"write_incident_report": {...}, "alert_operator": {...}}: a call per tool named
    if entry and all(k in names and isinstance(v, Mapping) for k, v in entry.items()):
        return [ToolCall(k, dict(v), raw=text[:2000]) for k, v in entry.items()]
    return []


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class OllamaVlm:
    """One Ollama server and model, as the agent uses them."""

    def __init__(self, config: VlmConfig, *, host: str | None = None) -> None:
        self.config = config
        self.host = host or config.host or "http://127.0.0.1:11434"
        self.model = config.model
        timeout = httpx.Timeout(config.request_timeout, connect=min(5.0, config.request_timeout))
        self.client = ollama.AsyncClient(host=self.host, timeout=timeout)
        base = self.host if "://" in self.host else f"http://{self.host}"
        self._http = httpx.AsyncClient(base_url=base.rstrip("/"), timeout=timeout)

    async def close(self) -> None:
        await self.client._client.aclose()
        await self._http.aclose()

    def _unavailable(self, exc: BaseException) -> VlmUnavailableError:
        if isinstance(exc, ollama.ResponseError):
            if exc.status_code == 404:
                return VlmUnavailableError(
                    f"Ollama at {self.host} does not have model {self.model!r}: {exc.error} "
                    f"(run `ollama pull {self.model}` on that machine)"
                )
            return VlmUnavailableError(
                f"Ollama at {self.host} answered HTTP {exc.status_code}: {exc.error}"
            )
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return VlmUnavailableError(f"Ollama at {self.host} did not answer in time")
        return VlmUnavailableError(f"Ollama at {self.host} is not reachable: {_describe(exc)}")

    def _chat_error(self, exc: ollama.ResponseError) -> EdgeInspectorError:
        """What an error answer to a chat means: tools refused, a broken stream, or down."""
        if exc.status_code == 400 and "does not support tools" in str(exc.error):
            return ToolsUnsupportedError(str(exc.error))
        if exc.status_code == -1:  # an error line in the middle of the stream
            return VlmUnavailableError(f"Ollama at {self.host} failed mid-answer: {exc.error}")
        return self._unavailable(exc)

    async def check(self) -> ModelProfile:
        """The server answers and has the model; what the model can do."""
        try:
            async with asyncio.timeout(self.config.request_timeout):
                listing = await self.client.list()
                names = {m.model for m in listing.models if m.model}
                wanted = {self.model, f"{self.model}:latest"}
                if not names & wanted:
                    have = ", ".join(sorted(names)) or "no models"
                    raise VlmModelMissingError(
                        f"model {self.model!r} is not on the Ollama server at {self.host} "
                        f"(it has: {have}); run `ollama pull {self.model}` there"
                    )
                shown = await self._show()
        except VlmUnavailableError:
            raise
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        except (ValueError, TypeError) as exc:  # an answer that is not Ollama's
            raise VlmUnavailableError(
                f"{self.host} does not answer like Ollama: {_describe(exc)}"
            ) from None
        caps = shown.get("capabilities")
        if isinstance(caps, list):
            return ModelProfile(self.model, tuple(str(c) for c in caps))
        try:
            return await self._find_capabilities(shown)
        except (ValueError, TypeError, AttributeError) as exc:  # an answer that is not Ollama's
            raise VlmUnavailableError(
                f"{self.host} does not answer like Ollama: {_describe(exc)}"
            ) from None

    async def _show(self) -> dict[str, Any]:
        """/api/show's answer as it came (the client's model drops `projector_info`)."""
        answer = await self._http.post("/api/show", json={"model": self.model})
        if answer.status_code >= 400:
            raise ollama.ResponseError(_error_text(answer), answer.status_code)
        data = answer.json()
        if not isinstance(data, dict):
            raise ValueError("/api/show did not answer with an object")
        return data

    async def _find_capabilities(self, shown: Mapping[str, Any]) -> ModelProfile:
        """What a server that does not list capabilities (Ollama before 0.6) serves: tools when
        the chat template renders them; vision when the model has a projector or a vision
        tower in its details, else from a probe (two pictures of one colour each, named back
        right by a model that sees, guessed by one that does not)."""
        caps = ["completion"]
        template = str(shown.get("template") or "")
        if ".Tools" in template or ".ToolCalls" in template:
            caps.append("tools")
        info = {str(k).lower() for k in shown.get("model_info") or {}}
        details = shown.get("details") or {}
        families = {str(f).lower() for f in (details.get("families") or ())}
        projector = bool(shown.get("projector_info")) or any(
            "vision" in k or "clip" in k or "projector" in k or ".mm." in k for k in info
        )
        if projector or families & {"clip", "mllama", "qwen25vl", "qwen2vl", "llava"}:
            caps.append("vision")
            return ModelProfile(self.model, tuple(caps), source="details")
        if await self._sees_colours():
            caps.append("vision")
        return ModelProfile(self.model, tuple(caps), source="probe")

    async def _sees_colours(self) -> bool:
        for colour, bgr in (("blue", (255, 0, 0)), ("yellow", (0, 255, 255))):
            image = np.full((64, 64, 3), bgr, dtype=np.uint8)
            ok, png = cv2.imencode(".png", image)
            if not ok:
                return False
            try:
                async with asyncio.timeout(max(self.config.request_timeout, 60.0)):
                    answer = await self.client.chat(
                        model=self.model,
                        messages=[
                            {
                                "role": "user",
                                "content": "What single colour fills this picture? One word.",
                                "images": [base64.b64encode(png.tobytes()).decode()],
                            }
                        ],
                        keep_alive=self.config.keep_alive,
                        options={"temperature": 0, "num_predict": 8},
                    )
            except ollama.ResponseError:
                return False  # e.g. "this model is missing data required for image input"
            except (httpx.HTTPError, ConnectionError, TimeoutError) as exc:
                raise self._unavailable(exc) from None
            if colour not in (answer.message.content or "").lower():
                return False
        return True

    async def warm_up(self) -> None:
        """Load the model now (an empty chat) and keep it loaded for `keep_alive`."""
        try:
            async with asyncio.timeout(max(self.config.request_timeout, 120.0)):
                await self.client.chat(
                    model=self.model, messages=[], keep_alive=self.config.keep_alive
                )
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, TimeoutError) as exc:
            raise self._unavailable(exc) from None

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        try:
            async with asyncio.timeout(self.config.request_timeout):
                answer = await self.client.embed(model=model, input=list(texts))
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        return [list(v) for v in answer.embeddings]

    def _chat_body(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        format: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "stream": True,
            "keep_alive": self.config.keep_alive,
            "options": {"temperature": self.config.temperature, **self.config.options},
        }
        if tools:
            body["tools"] = list(tools)
        if format is not None:
            body["format"] = dict(format)
        return body

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        format: Mapping[str, Any] | None = None,
    ) -> ChatTurn:
        """One streamed chat turn; a stream silent for `request_timeout` counts as down.

        The stream is read here rather than by the `ollama` client, which rejects a whole answer
        when one tool call's `arguments` is not an object: what the model wrote is the model's
        business (the agent refuses such a call and keeps it), while a connection, an error
        status or a stream that is not Ollama's is the server's."""
        body = self._chat_body(messages, tools, format)
        turn = ChatTurn()
        content: list[str] = []
        try:
            async with asyncio.timeout(self.config.request_timeout) as idle:
                async with self._http.stream("POST", "/api/chat", json=body) as answer:
                    if answer.status_code >= 400:
                        await answer.aread()
                        raise ollama.ResponseError(_error_text(answer), answer.status_code)
                    async for line in answer.aiter_lines():
                        idle.reschedule(
                            asyncio.get_running_loop().time() + self.config.request_timeout
                        )
                        if not line.strip():
                            continue
                        if _read_part(json.loads(line), turn, content):
                            break
        except ollama.ResponseError as exc:
            raise self._chat_error(exc) from None
        except (httpx.HTTPError, ConnectionError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise VlmUnavailableError(
                f"Ollama at {self.host} sent a broken stream: {_describe(exc)}"
            ) from None
        turn.content = "".join(content)
        if turn.done_reason is None:
            raise VlmUnavailableError(f"Ollama at {self.host} ended the answer early")
        return turn


def _error_text(answer: httpx.Response) -> str:
    try:
        data = answer.json()
    except ValueError:
        return answer.text[:300] or answer.reason_phrase
    error = data.get("error") if isinstance(data, dict) else None
    return str(error) if error else answer.text[:300]


def _read_part(part: Any, turn: ChatTurn, content: list[str]) -> bool:
    """Take one line of a chat stream into `turn`; True when it was the last. A line that is
    not an object or carries an error is the server's fault (raised); whatever the model put in
    the message is kept as it came."""
    if not isinstance(part, dict):
        raise ValueError(f"a stream line that is not an object: {str(part)[:100]}")
    if part.get("error"):
        raise ollama.ResponseError(str(part["error"]), -1)
    message = part.get("message") or {}
    if not isinstance(message, dict):
        raise ValueError("a stream line whose message is not an object")
    if isinstance(text := message.get("content"), str):
        content.append(text)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            turn.tool_calls.append(ToolCall("", call, raw=json.dumps(call, default=str)[:2000]))
            continue
        name = function.get("name")
        turn.tool_calls.append(
            ToolCall(
                name if isinstance(name, str) else "",
                function.get("arguments"),
                raw=json.dumps(function, default=str)[:2000],
            )
        )
    if part.get("done"):
        turn.done_reason = str(part.get("done_reason") or "stop")
        return True
    return False
