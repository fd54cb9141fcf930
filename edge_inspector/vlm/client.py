"""Ollama through its official client, with the failure modes sorted into two kinds.

`VlmUnavailableError`: the server is down, slow, overloaded, or lacks the model. The incident
waits and is retried later; the circuit breaker counts these.
`VlmInvalidAnswerError`: the server answered, but not with what was asked (broken JSON under
`format`). Retried once by the agent, then recorded with the raw text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
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
    name: str
    arguments: Any


@dataclass(slots=True)
class ChatTurn:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    done_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What /api/show says the model can do (None: the server did not say)."""

    name: str
    capabilities: tuple[str, ...] | None

    @property
    def tools(self) -> bool:
        return self.capabilities is None or "tools" in self.capabilities

    @property
    def vision(self) -> bool:
        return self.capabilities is None or "vision" in self.capabilities


_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_text_tool_calls(content: str) -> list[ToolCall]:
    """Tool calls a model wrote as text instead of `tool_calls` (a known small-model habit):
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, a fenced or bare JSON object
    or list of such objects."""
    candidates = _TOOL_TAG.findall(content) or _FENCE.findall(content) or [content.strip()]
    calls: list[ToolCall] = []
    for text in candidates:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, ValueError):
            continue
        for entry in data if isinstance(data, list) else [data]:
            if not isinstance(entry, Mapping):
                continue
            item = entry["function"] if isinstance(entry.get("function"), Mapping) else entry
            name = item.get("name")
            args = item.get("arguments", item.get("parameters", {}))
            if isinstance(args, str):
                with contextlib.suppress(json.JSONDecodeError):
                    args = json.loads(args)
            if isinstance(name, str) and name:
                calls.append(ToolCall(name, args))
    return calls


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class OllamaVlm:
    """One Ollama server and model, as the agent uses them."""

    def __init__(self, config: VlmConfig, *, host: str | None = None) -> None:
        self.config = config
        self.host = host or config.host or "http://127.0.0.1:11434"
        self.model = config.model
        self.client = ollama.AsyncClient(
            host=self.host,
            timeout=httpx.Timeout(config.request_timeout, connect=min(5.0, config.request_timeout)),
        )

    async def close(self) -> None:
        await self.client._client.aclose()

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
                shown = await self.client.show(self.model)
        except VlmUnavailableError:
            raise
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        except (ValueError, TypeError) as exc:  # an answer that is not Ollama's
            raise VlmUnavailableError(
                f"{self.host} does not answer like Ollama: {_describe(exc)}"
            ) from None
        caps = tuple(shown.capabilities) if shown.capabilities is not None else None
        return ModelProfile(self.model, caps)

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

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        format: Mapping[str, Any] | None = None,
    ) -> ChatTurn:
        """One streamed chat turn; a stream silent for `request_timeout` counts as down."""
        turn = ChatTurn()
        content: list[str] = []
        try:
            async with asyncio.timeout(self.config.request_timeout) as idle:
                stream = await self.client.chat(
                    model=self.model,
                    messages=list(messages),
                    tools=list(tools) if tools else None,
                    format=dict(format) if format is not None else None,
                    stream=True,
                    keep_alive=self.config.keep_alive,
                    options={"temperature": self.config.temperature},
                )
                async for part in stream:
                    loop = asyncio.get_running_loop()
                    idle.reschedule(loop.time() + self.config.request_timeout)
                    if part.message.content:
                        content.append(part.message.content)
                    for call in part.message.tool_calls or ():
                        turn.tool_calls.append(
                            ToolCall(call.function.name, call.function.arguments)
                        )
                    if part.done:
                        turn.done_reason = part.done_reason
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
