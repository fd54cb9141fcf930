"""Fixtures the engine's VLM tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from edge_inspector.demo.synthetic import ConveyorFrame
from tests.ollama_server import FakeOllama


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    """A scripted Ollama on a free loopback port, stopped after the test."""
    server = FakeOllama()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def scenes(defect_scenes: list[ConveyorFrame]) -> list[ConveyorFrame]:
    """Frames with exactly one defect: one incident each, so scripted replies line up."""
    return [s for s in defect_scenes if len(s.truths) == 1]
