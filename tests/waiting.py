"""Waiting for a condition with a deadline (never a fixed sleep that expects throughput)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Return as soon as `condition()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def until_async(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Await `check()` until its value is truthy, and return that value; fail naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.01)
