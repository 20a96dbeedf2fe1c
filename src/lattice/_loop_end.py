"""Dispose of a loop's shared engines when the loop shuts down, without being asked.

A script that makes sessions with ``from_url`` inside ``asyncio.run(main())``
and never calls ``await lattice.dispose_engines()`` used to leave its pooled
connections to the garbage collector after the loop had closed; aiomysql then
printed ``Exception ignored in Connection.__del__ ... Event loop is closed``
at exit, and the loop's engines stayed in memory.

The hook used here is the one asyncio gives async generators:
``asyncio.run`` (and ``asyncio.Runner``) end with ``loop.shutdown_asyncgens()``,
which closes every async generator still suspended on that loop, while the
loop still runs. Lattice starts one such generator per loop that gets a
shared engine; closing it disposes of that loop's engines. A loop closed
without ``shutdown_asyncgens`` (a hand-made loop) is left as before:
``dispose_engines()`` is still the explicit way, and costs nothing when this
already ran.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

__all__ = ["dispose_at_loop_end"]

#: Removes and returns a loop's engines.
Take = Callable[[asyncio.AbstractEventLoop], Iterable[Any]]

# loop -> its suspended closer. Entries go when the closer runs (or the loop is freed).
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = (
    weakref.WeakKeyDictionary()
)


async def _closer(
    loop: weakref.ref[asyncio.AbstractEventLoop], take: Take
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        # Runs in loop.shutdown_asyncgens(), the loop still running.
        running = loop()
        if running is not None:
            _CLOSERS.pop(running, None)
            for engine in take(running):
                await engine.dispose()


def dispose_at_loop_end(loop: asyncio.AbstractEventLoop, take: Take) -> None:
    """When ``loop`` shuts down, dispose of what ``take(loop)`` returns then.

    ``take`` removes and returns the loop's engines (anything with an async
    ``dispose()``); it must not hold ``loop`` itself. Call from code running
    on ``loop``; once per loop is enough (later calls do nothing).
    """
    if loop in _CLOSERS:
        return
    closer = _closer(weakref.ref(loop), take)
    _CLOSERS[loop] = closer
    # Step it to its first yield now, on this loop: asyncio's first-iteration
    # hook files it with the running loop, whose shutdown_asyncgens() closes it.
    step = closer.asend(None)
    try:
        step.send(None)
    except StopIteration:
        pass
