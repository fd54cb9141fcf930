"""Ending the engine's background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel"]


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel these tasks (None: none there) and wait until each has ended; a task's own
    cancellation is not an error."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
