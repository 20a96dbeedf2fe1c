"""Locks that belong to no single event loop, for the engine state (lattice.engines)."""

from __future__ import annotations

import asyncio
import threading
import weakref

__all__ = ["NO_LOCK", "CrossLoopLock", "LoopLocks", "NoLock"]


class LoopLocks:
    """One ``asyncio.Lock`` per event loop (an asyncio lock belongs to one loop).

    Taken on every write, so the last loop's lock is kept at hand: a lookup
    in the weak dictionary cost a few microseconds per call.
    """

    __slots__ = ("_last", "_locks")

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], asyncio.Lock] | None = None

    def get(self) -> asyncio.Lock:
        """The running loop's lock."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        self._last = (weakref.ref(loop), lock)
        return lock

    def values(self) -> list[asyncio.Lock]:
        """Every loop's lock."""
        return list(self._locks.values())


class CrossLoopLock:
    """A lock that serialises its holders across event loops and threads.

    An in-memory SQLite engine's one connection may be used from several loops
    (threads). Within a loop callers queue on its asyncio lock; across loops
    the holder of a loop's turn takes a thread lock, sleeping briefly if taken.
    """

    __slots__ = ("_loops", "_thread_lock")

    def __init__(self) -> None:
        self._loops = LoopLocks()
        self._thread_lock = threading.Lock()

    async def __aenter__(self) -> None:
        turn = self._loops.get()
        await turn.acquire()
        try:
            # A thread lock cannot be awaited, and an asyncio.Event belongs to one
            # loop: a short sleep is the only portable wait (and rarely taken).
            while not self._thread_lock.acquire(blocking=False):  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
        except BaseException:
            turn.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._thread_lock.release()
        self._loops.get().release()

    def locked(self) -> bool:
        """True while some caller holds it."""
        return self._thread_lock.locked()


class NoLock:
    """``async with`` that does nothing (an engine that needs no lock)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


NO_LOCK = NoLock()
