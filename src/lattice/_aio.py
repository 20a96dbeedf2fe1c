"""Small asyncio helpers shared by the backends."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["outlast_cancellation"]


async def outlast_cancellation(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, whatever cancellations of the waiter arrive meanwhile.

    A write that has started must run to its end (or the caller could be told
    "cancelled" while the database commits); the cancellation is re-raised by
    the caller afterwards.
    """
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            continue
