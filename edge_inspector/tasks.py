"""Ending the engine's background tasks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["cancel"]

_LOGGER = logging.getLogger(__name__)


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel these tasks (None: none there) and wait until each has ended. A task's own
    cancellation is not an error, and one that had failed is logged, not raised: the caller is
    stopping and has more to close. The caller's own cancellation goes on."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            _LOGGER.exception("background task %s had failed", task.get_name())
