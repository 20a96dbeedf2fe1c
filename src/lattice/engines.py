"""Engines: one shared engine per (URL, options, event loop), and per-engine state.

Who owns what:

* An engine you pass in (``SQLAlchemySession(..., engine=e)``,
  ``SessionStore(e)``) is yours. Lattice never disposes it.
* An engine Lattice makes from a URL (``from_url``) is shared by every
  session and store of the process that asks for the same URL and engine
  options on the same event loop, so a thousand sessions use one pool.
  ``await lattice.dispose_engines()`` closes them at shutdown; a loop that
  ends drops its engines with it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from . import urls
from ._loop_end import dispose_at_loop_end

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "check_engine",
    "dispose_engines",
    "engine_state",
    "make_engine",
    "normalize_url",
    "shared_engine",
    "shared_engine_key",
]

#: How long a SQLite connection waits for another writer before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000

# Which extra installs each driver.
_DRIVER_EXTRAS = {
    "asyncpg": "postgres",
    "aiomysql": "mysql",
    "aiosqlite": "sqlite",
}


#: Connections a Lattice-made engine keeps (SQLAlchemy's default total, 5 + 10).
_POOL_SIZE = 15


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``, mapping a driverless URL to Lattice's async driver.

    Raises:
        ValueError: the URL cannot be used (``lattice.urls.UrlError``).
    """
    return urls.normalize(url)  # checks, driver mapping, redacted messages: lattice.urls


def is_sqlite_memory(url: URL) -> bool:
    """True for an in-memory SQLite database URL."""
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or "mode=memory" in database
    )


def _configure_sqlite(engine: AsyncEngine, *, wal: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                # WAL with synchronous=NORMAL is durable across application
                # crashes; a power loss may drop the last commits.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()


def check_engine(engine: Any, owner: str) -> AsyncEngine:
    """``engine`` if it is an ``AsyncEngine``, else a ``TypeError`` naming ``owner.from_url``."""
    if not isinstance(engine, AsyncEngine):
        raise TypeError(
            f"engine must be a sqlalchemy AsyncEngine, not {type(engine).__name__}; "
            f"use {owner}.from_url(...) to start from a URL"
        )
    return engine


def make_engine(url: str | URL, **engine_kwargs: Any) -> AsyncEngine:
    """Create a new engine with Lattice's settings for its database.

    SQLite files get WAL mode, a busy timeout and foreign keys; in-memory
    SQLite gets one connection (``StaticPool``) so every call sees the same
    database. Other engines keep up to 15 pooled connections (``pool_size=15,
    max_overflow=0``) unless ``pool_size`` or ``max_overflow`` is given, and
    hand out the most recently used one first (``pool_use_lifo=True``). A
    missing driver raises ``ImportError`` naming the extra to install.
    """
    # libpq parameters (?sslmode=...) go where asyncpg reads them: lattice.urls.
    parsed, kwargs = urls.connect_options(normalize_url(url), engine_kwargs)
    backend = parsed.get_backend_name()
    memory = is_sqlite_memory(parsed)
    if memory:
        kwargs.setdefault("poolclass", StaticPool)
        connect_args = dict(kwargs.get("connect_args") or {})
        connect_args.setdefault("check_same_thread", False)
        kwargs["connect_args"] = connect_args
    if backend == "mysql":
        # MySQL closes idle connections after wait_timeout (8 h by default).
        kwargs.setdefault("pool_recycle", 3600)
    if not memory and kwargs.get("poolclass") is None:
        # Hand out the most recently used connection: its server process (or
        # aiosqlite thread) is still warm. First-in-first-out cycled a
        # sequence of calls through all 15: get_items(limit=20) took 378 us
        # per call that way on PostgreSQL and 313 us last-in-first-out
        # (MariaDB 725 -> 675 us; median of 6 interleaved runs of 2,000 calls
        # on two engines differing only in this). Connections beyond what the
        # load needs also stay idle, where server timeouts can retire them.
        kwargs.setdefault("pool_use_lifo", True)
    if not memory and "poolclass" not in kwargs and not {"pool_size", "max_overflow"} & set(kwargs):
        # The same 15 connections at most as SQLAlchemy's default (5 + 10
        # overflow), but all kept: with more callers than pooled connections,
        # SQLAlchemy closes an overflow connection on its return whenever five
        # are idle, and opens a new one on the next checkout. With calls this
        # short that churn dominated: 50 sessions writing at once on
        # PostgreSQL opened 134 connections per 1,000 calls, 1,262-1,521
        # items/s; with 15 kept, 7,161-7,486 items/s (benchmark f, quick sizes).
        kwargs["pool_size"] = _POOL_SIZE
        kwargs["max_overflow"] = 0
    try:
        engine = create_async_engine(parsed, **kwargs)
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        driver = parsed.get_driver_name()
        extra = _DRIVER_EXTRAS.get(driver)
        hint = f"pip install 'lattice-sessions[{extra}]'" if extra else f"install {driver}"
        raise ImportError(
            f"the database driver {driver!r} for {parsed.drivername}:// URLs is not installed; "
            f"{hint}"
        ) from exc
    if backend == "sqlite":
        _configure_sqlite(engine, wal=not memory)
    return engine


def _options_key(engine_kwargs: dict[str, Any]) -> str:
    return repr(sorted(engine_kwargs.items(), key=lambda kv: kv[0]))


# loop -> {(url, options): engine}. A loop that goes away takes its engines along.
_EngineMap = dict[tuple[str, str], AsyncEngine]
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _EngineMap] = (
    weakref.WeakKeyDictionary()
)
# Engines made while no loop runs (a session built in synchronous code, used later).
_LOOPLESS: _EngineMap = {}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def shared_engine_key(url: URL, engine_kwargs: dict[str, Any]) -> tuple[str, str]:
    """The key :func:`shared_engine` files ``url`` (normalised) and its options under."""
    return (url.render_as_string(hide_password=False), _options_key(engine_kwargs))


def shared_engine(
    url: str | URL,
    engine_kwargs: dict[str, Any] | None = None,
    *,
    key: tuple[str, str] | None = None,
) -> AsyncEngine:
    """Return the process's shared engine for ``url`` and options on the running loop.

    In-memory SQLite URLs are not shared: each would be a separate database
    anyway, so every call gets a new engine. ``key``, from
    :func:`shared_engine_key` on the normalised URL, saves rendering the URL
    again (sessions keep theirs: this runs on every call).
    """
    kwargs = engine_kwargs or {}
    if key is None:
        parsed = normalize_url(url)
        if is_sqlite_memory(parsed):
            return make_engine(parsed, **kwargs)
        key = shared_engine_key(parsed, kwargs)
    loop = _running_loop()
    engines = _LOOPLESS if loop is None else _SHARED.setdefault(loop, {})
    engine = engines.get(key)
    if engine is None:
        engine = engines[key] = make_engine(normalize_url(url), **kwargs)
        if loop is not None:  # a forgotten dispose_engines() is done at the loop's end
            dispose_at_loop_end(loop, lambda ended: list(_SHARED.pop(ended, {}).values()))
    return engine


async def dispose_engines() -> None:
    """Dispose of every engine Lattice shared from a URL on this event loop.

    Engines passed in by the application are never touched. Call it at
    shutdown, from the loop that used the sessions.
    """
    loop = _running_loop()
    engines = list(_LOOPLESS.values())
    _LOOPLESS.clear()
    if loop is not None:
        engines += list(_SHARED.pop(loop, {}).values())
    for engine in engines:
        await engine.dispose()


class _LoopLocks:
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


class _NoLock:
    """``async with`` that does nothing (an engine that needs no lock)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


@dataclass
class EngineState:
    """What Lattice remembers about one engine: created tables, locks, read mode."""

    created: set[Any] = field(default_factory=set)
    max_packet: int | None = None
    #: Run single-statement reads in AUTOCOMMIT (PostgreSQL; see ``engine_state``).
    autocommit_reads: bool = False
    #: Run sessions' statements on the driver connection (``lattice.fastpath``)
    #: when the driver has a fast path; False keeps them on SQLAlchemy's execution.
    fast_path: bool = True
    #: Testing hook of the fast path, None (no cost) unless a test sets it:
    #: awaited as ``trace(when, sql, connection_info)`` before each statement
    #: (``"before_cursor_execute"``), after it (``"after_cursor_execute"``) and
    #: before COMMIT (``"commit"``, sql None). ``connection_info`` is the pool
    #: record's ``info`` dict. tests/reliability.py pauses and cancels calls there.
    trace: Callable[[str, str | None, dict[Any, Any]], Awaitable[None]] | None = None
    # One lock per loop: asyncio locks belong to the loop they first wait on.
    _create_locks: _LoopLocks = field(default_factory=_LoopLocks)
    _use_locks: _LoopLocks | None = None
    _write_locks: _LoopLocks | None = None

    def create_lock(self) -> asyncio.Lock:
        return self._create_locks.get()

    def exclusive(self) -> AbstractAsyncContextManager[Any]:
        """Serialise use of an engine that has one shared connection (``StaticPool``)."""
        # A plain object, not a generator-based context manager: it is entered
        # on every call, and costs nothing when there is no lock.
        if self._use_locks is None:
            return _NO_LOCK
        return self._use_locks.get()

    def writer(self) -> AbstractAsyncContextManager[Any]:
        """Serialise this process's write transactions on a SQLite file.

        SQLite lets one transaction write at a time. Without this lock,
        concurrent writers of one process meet in SQLite's busy handler,
        which sleeps and retries (1, 2, 5, ... up to 100 ms at a time);
        queueing them on an asyncio lock instead hands the database over as
        soon as the previous COMMIT returns. Measured with 50 sessions
        writing at once (benchmark ``f``, 2 items per call): about 800
        items/s without the lock and several thousand with it (see
        docs/performance.md). Other processes still meet the busy timeout.
        """
        if self._write_locks is None:
            return _NO_LOCK
        return self._write_locks.get()


_STATE: weakref.WeakKeyDictionary[Any, EngineState] = weakref.WeakKeyDictionary()


def engine_state(engine: AsyncEngine) -> EngineState:
    """The state Lattice keeps for ``engine`` (made on first use)."""
    sync_engine = engine.sync_engine
    state = _STATE.get(sync_engine)
    if state is None:
        state = EngineState()
        dialect = sync_engine.dialect.name
        if isinstance(sync_engine.pool, StaticPool):
            # One DBAPI connection shared by every checkout: transactions of
            # concurrent calls would interleave on it, so they take turns.
            state._use_locks = _LoopLocks()
        elif dialect == "sqlite":
            state._write_locks = _LoopLocks()
        # asyncpg starts a transaction with its own BEGIN round trip and the
        # pool ends it with a ROLLBACK one; in AUTOCOMMIT (a flag on
        # SQLAlchemy's asyncpg adapter, no round trip to set or reset) a read
        # is its one statement. A single SELECT sees one snapshot either way.
        # Measured: get_items(limit=20) takes 0.64x the time of the BEGIN/SELECT/
        # ROLLBACK form (median of 15 interleaved batches on a loaded 2-core box).
        # Not on MySQL, where switching autocommit costs a round trip each way.
        state.autocommit_reads = dialect == "postgresql"
        _STATE[sync_engine] = state
    return state
