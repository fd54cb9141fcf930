"""The local Ollama stand-in answers the official client exactly as Ollama does; the tests of
the agent are only as good as this."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.ollama_server import DEFAULT_MODEL, FakeOllama, Reply


@pytest.fixture
def server(ollama: FakeOllama) -> FakeOllama:
    """The shared scripted server (conftest's `ollama`), by another name: here `ollama` is the
    official client module the tests drive it with."""
    return ollama


async def test_models_show_and_embed(server: FakeOllama) -> None:
    client = ollama.AsyncClient(host=server.url)
    listing = await client.list()
    assert [m.model for m in listing.models] == [DEFAULT_MODEL, "all-minilm"]
    assert listing.models[0].details is not None
    assert listing.models[0].details.quantization_level == "Q4_K_M"
    shown = await client.show(DEFAULT_MODEL)
    assert shown.capabilities == ["completion", "vision", "tools"]
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("nope:1b")
    assert (missing.value.status_code, missing.value.error) == (404, "model 'nope:1b' not found")
    embedded = await client.embed(model="all-minilm", input=["scratch", "dent"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 64


async def test_chat_with_and_without_streaming_tools_images_and_format(
    server: FakeOllama,
) -> None:
    client = ollama.AsyncClient(host=server.url)
    server.queue(
        Reply(content="a long answer that spans more than one chunk of the stream"),
        Reply.tools(("search_manual", {"query": "scratch"})),
    )
    parts = [
        p
        async for p in await client.chat(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "hi", "images": [b"\xff\xd8jpeg"]}],
            format={"type": "object", "properties": {}},
            stream=True,
        )
    ]
    assert len(parts) > 2 and parts[-1].done and parts[-1].done_reason == "stop"
    assert "".join(p.message.content or "" for p in parts).startswith("a long answer")
    assert server.requests[0]["messages"][0]["images"] == ["/9hqcGVn"]  # plain base64
    assert server.requests[0]["format"] == {"type": "object", "properties": {}}

    answer = await client.chat(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "look it up"}],
        tools=[{"type": "function", "function": {"name": "search_manual", "parameters": {}}}],
        stream=False,
    )
    assert answer.message.tool_calls is not None
    call = answer.message.tool_calls[0].function
    assert (call.name, call.arguments) == ("search_manual", {"query": "scratch"})
    assert answer.eval_count == 58


async def test_errors_are_ollamas(server: FakeOllama) -> None:
    client = ollama.AsyncClient(host=server.url)
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="llama9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    assert missing.value.error == 'model "llama9" not found, try pulling it first'

    server.models[DEFAULT_MODEL] = ["completion"]
    with pytest.raises(ollama.ResponseError, match="does not support tools"):
        await client.chat(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "t"}}],
        )

    # what the real server refuses: tool-call arguments as a string
    raw = httpx.AsyncClient(base_url=server.url)
    bad = await raw.post(
        "/api/chat",
        json={
            "model": DEFAULT_MODEL,
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "t", "arguments": "{}"}}],
                }
            ],
        },
    )
    assert bad.status_code == 400 and "cannot unmarshal string" in bad.json()["error"]
    await raw.aclose()

    server.queue(Reply(stream_error="an error was encountered while running the model"))
    with pytest.raises(ollama.ResponseError, match="encountered while running"):
        async for _ in await client.chat(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass

    server.fail_all = (500, "llama runner process has terminated")
    with pytest.raises(ollama.ResponseError) as crashed:
        await client.list()
    assert crashed.value.status_code == 500
