"""A local server that speaks Ollama's HTTP API, scripted per test.

The shapes follow Ollama's API documentation and the official client's models: `/api/chat`
streams NDJSON (`application/x-ndjson`) unless `"stream": false`, tool calls carry `arguments`
as a JSON object, images arrive as plain base64 strings, errors are `{"error": "..."}` with the
status Ollama uses (404 for a missing model, 400 for a model without tools, 500 for a crash).
Requests the real server would refuse are refused here the same way, so the tests also check
what the engine sends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = ["FakeOllama", "Reply"]

DEFAULT_MODEL = "qwen2.5vl:7b"
_STATS = {
    "total_duration": 912_000_000,
    "load_duration": 12_000_000,
    "prompt_eval_count": 412,
    "prompt_eval_duration": 300_000_000,
    "eval_count": 58,
    "eval_duration": 600_000_000,
}


@dataclass
class Reply:
    """One scripted answer to /api/chat."""

    content: str = ""
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)
    status: int = 200
    error: str | None = None
    delay: float = 0.0  # before the first byte
    hang: bool = False  # never answer
    die_after: int | None = None  # close the connection after this many stream chunks
    stream_error: str | None = None  # an {"error": ...} line in the middle of the stream

    @classmethod
    def json(cls, data: Any, **kw: Any) -> Reply:
        return cls(content=json.dumps(data), **kw)

    @classmethod
    def tools(cls, *calls: tuple[str, Any], **kw: Any) -> Reply:
        return cls(tool_calls=list(calls), **kw)


type Script = Callable[[dict[str, Any]], Reply]

_SYNONYMS = {"abrasion": "scratch", "scuff": "scratch", "ding": "dent", "fracture": "crack"}


def fake_embedding(text: str, dims: int = 64) -> list[float]:
    """A deterministic bag-of-words vector, with a few synonyms folded together."""
    vector = [0.0] * dims
    for raw in re.findall(r"[a-z]+", text.lower()):
        word = _SYNONYMS.get(raw.rstrip("s"), raw.rstrip("es").rstrip("s"))
        slot = int(hashlib.sha256(word.encode()).hexdigest(), 16) % dims
        vector[slot] += 1.0
    return vector


class FakeOllama:
    """`await FakeOllama().start()`; set `script` or push replies with `queue()`."""

    def __init__(
        self,
        models: dict[str, list[str] | None] | None = None,
        *,
        embed_models: tuple[str, ...] = ("all-minilm",),
    ) -> None:
        # a model's capabilities as /api/show lists them (None: the server does not say)
        self.models: dict[str, list[str] | None] = (
            models if models is not None else {DEFAULT_MODEL: ["completion", "vision", "tools"]}
        )
        self.embed_models = list(embed_models)
        self.replies: deque[Reply] = deque()
        self.script: Script | None = None
        self.requests: list[dict[str, Any]] = []  # every /api/chat body, in order
        self.calls: list[str] = []  # every path requested
        self.fail_all: tuple[int, str] | None = None  # answer everything with this error
        self.hang_all = False
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self, port: int = 0) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/embed", self._embed)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def _gate(self, request: web.Request) -> web.Response | None:
        self.calls.append(request.path)
        if self.hang_all:
            await asyncio.sleep(3600)
        if self.fail_all is not None:
            return self._error(*self.fail_all)
        return None

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "invalid character looking for beginning of value")
        if not isinstance(body, dict):
            return self._error(400, "json: cannot unmarshal array into Go value")
        return body

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")

    # -- endpoints -------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": "0.12.6"})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        if (gated := await self._gate(request)) is not None:
            return gated
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2026-10-01T09:00:00.000000000Z",
                "size": 6_000_000_000,
                "digest": hashlib.sha256(name.encode()).hexdigest(),
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "qwen25vl",
                    "families": ["qwen25vl"],
                    "parameter_size": "8.3B",
                    "quantization_level": "Q4_K_M",
                },
            }
            for name in [*self.models, *self.embed_models]
        ]
        return web.json_response({"models": models})

    async def _show(self, request: web.Request) -> web.StreamResponse:
        if (gated := await self._gate(request)) is not None:
            return gated
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name")
        if name not in self.models and name not in self.embed_models:
            return self._error(404, f"model '{name}' not found")
        caps = self.models.get(name, ["embedding"])
        if caps is None:  # a server from before capabilities (0.5): a text model with tools
            return web.json_response(
                {
                    "modelfile": f"FROM {name}",
                    "template": "{{ .System }}{{ range .Tools }}{{ .Function }}{{ end }}",
                    "details": {"format": "gguf", "family": "qwen2", "families": ["qwen2"]},
                    "model_info": {"general.architecture": "qwen2"},
                    "modified_at": "2026-10-01T09:00:00.000000000Z",
                }
            )
        return web.json_response(
            {
                "modelfile": f"FROM {name}",
                "parameters": "temperature 0.1",
                "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "family": "qwen25vl", "parameter_size": "8.3B"},
                "model_info": {"general.architecture": "qwen25vl"},
                "capabilities": caps,
                "modified_at": "2026-10-01T09:00:00.000000000Z",
            }
        )

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        if (gated := await self._gate(request)) is not None:
            return gated
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if body.get("model") not in self.embed_models:
            return self._error(404, f'model "{body.get("model")}" not found, try pulling it first')
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self._error(400, "invalid input type")
        return web.json_response(
            {
                "model": body["model"],
                "embeddings": [fake_embedding(t) for t in texts],
                "total_duration": 14_000_000,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(len(t.split()) for t in texts),
            }
        )

    def _check_chat(self, body: dict[str, Any]) -> str | None:  # noqa: PLR0911 (a list of checks)
        """What the real server would refuse in a chat request."""
        messages = body.get("messages", [])
        if not isinstance(messages, list):
            return "json: cannot unmarshal object into Go struct field ChatRequest.messages"
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return "json: cannot unmarshal into Go struct field Message.role"
            for image in message.get("images") or []:
                if not isinstance(image, str):
                    return "json: cannot unmarshal into Go struct field Message.images"
                try:
                    base64.b64decode(image, validate=True)
                except (binascii.Error, ValueError):
                    return "illegal base64 data at input byte 0"
            for call in message.get("tool_calls") or []:
                arguments = call.get("function", {}).get("arguments")
                if not isinstance(arguments, dict):
                    return (
                        "json: cannot unmarshal string into Go struct field "
                        "ToolCallFunction.messages.tool_calls.function.arguments of type "
                        "api.ToolCallFunctionArguments"
                    )
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            return "invalid format"
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:  # noqa: PLR0911 (each of the server's answers)
        if (gated := await self._gate(request)) is not None:
            return gated
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model = str(body.get("model"))
        if (refused := self._refuse_chat(model, body)) is not None:
            return refused
        if not body.get("messages"):  # an empty chat loads the model
            done = {
                "model": model,
                "created_at": self._now(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": "load",
                "done": True,
            }
            return web.json_response(done)
        self.requests.append(body)
        reply = self._next_reply(body)
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            return self._error(reply.status, reply.error or "internal error")
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": name, "arguments": args}} for name, args in reply.tool_calls
            ]
        final = {
            "model": model,
            "created_at": self._now(),
            "done": True,
            "done_reason": "stop",
            **_STATS,
        }
        if not body.get("stream", True):
            return web.json_response({**final, "message": message})
        return await self._stream(request, model, reply, message, final)

    def _refuse_chat(self, model: str, body: dict[str, Any]) -> web.Response | None:
        """The error the real server answers a chat request with, if any."""
        if model not in self.models:
            return self._error(404, f'model "{model}" not found, try pulling it first')
        if (problem := self._check_chat(body)) is not None:
            return self._error(400, problem)
        if body.get("tools") and "tools" not in (self.models[model] or ["tools"]):
            return self._error(400, f"registry.ollama.ai/library/{model} does not support tools")
        return None

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if self.replies:
            return self.replies.popleft()
        if self.script is not None:
            return self.script(body)
        return Reply(content="")

    async def _stream(
        self,
        request: web.Request,
        model: str,
        reply: Reply,
        message: dict[str, Any],
        final: dict[str, Any],
    ) -> web.StreamResponse:
        """The answer as Ollama streams it: the content in pieces, the tool calls, the end."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            await response.prepare(request)
        except ConnectionError:
            return response  # the client gave up while the model was "thinking"
        pieces = [reply.content[i : i + 16] for i in range(0, len(reply.content), 16)]
        chunks: list[dict[str, Any]] = [
            {
                "model": model,
                "created_at": self._now(),
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            for piece in pieces
        ]
        if reply.tool_calls:
            chunks.append(
                {
                    "model": model,
                    "created_at": self._now(),
                    "message": {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": message["tool_calls"],
                    },
                    "done": False,
                }
            )
        if reply.stream_error is not None:
            chunks.insert(len(chunks) // 2, {"error": reply.stream_error})
        chunks.append({**final, "message": {"role": "assistant", "content": ""}})
        try:
            for i, chunk in enumerate(chunks):
                if reply.die_after is not None and i >= reply.die_after:
                    assert request.transport is not None
                    request.transport.close()  # the server dies mid-stream
                    return response
                await response.write(json.dumps(chunk).encode() + b"\n")
                if "error" in chunk:
                    break
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away (a timeout, or the engine stopping)
        return response


def agent_script(defect: str = "scratch", severity: str = "medium") -> Script:
    """A well-behaved model for any number of incidents: classify, search the manual, write
    the report and divert the part, then stop."""

    def script(body: dict[str, Any]) -> Reply:
        if body.get("format"):  # the classification; the tool loop has no schema
            return Reply.json(
                {
                    "defect_type": defect,
                    "severity": severity,
                    "confidence": 0.8,
                    "description": f"a {defect} on the part",
                }
            )
        tools_answered = [m for m in body["messages"] if m.get("role") == "tool"]
        if not tools_answered:
            return Reply.tools(("search_manual", {"query": f"{defect} fix"}))
        if len(tools_answered) == 1:
            return Reply.tools(
                (
                    "write_incident_report",
                    {
                        "summary": f"{severity} {defect} found",
                        "probable_cause": "see the manual",
                        "fix_steps": ["Follow the manual section"],
                    },
                ),
                ("divert_part", {"bin": "reject"}),
            )
        return Reply(content="Handled.")

    return script


def _main() -> None:
    """`python -m tests.ollama_server --delay 2`: serve the well-behaved agent script with a
    delay per chat (benchmarks run it as a separate process, as Ollama would be)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    script = agent_script()

    def slow(body: dict[str, Any]) -> Reply:
        reply = script(body)
        reply.delay = args.delay
        return reply

    async def serve() -> None:
        server = FakeOllama()
        server.script = slow
        url = await server.start(args.port)
        print(url, flush=True)
        sys.stdout.close()
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    _main()
