"""Engines: one shared engine per (URL, options, event loop), and per-engine state.

Who owns what:

* An engine you pass in (``SQLAlchemySession(..., engine=e)``,
  ``SessionStore(e)``) is yours. Lattice never disposes it.
* An engine Lattice makes from a URL (``from_url``) is shared by every
  session and store of the process that asks for the same URL and engine
  options on the same event loop, so a thousand sessions use one pool.
  ``await lattice.dispose_engines()`` closes them at shutdown; a loop that
  shuts down (``asyncio.run``) disposes its engines itself.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from . import _compat, urls
from .dialects import GALERA_PROBE, galera_from, rules
from .lock_waits import (
    DEFAULT_LOCK_TIMEOUT_S,
    check_lock_timeout,
    limit_lock_waits,
    names_lock_timeout,
)
from .locks import NO_LOCK, CrossLoopLock, LoopLocks

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "SQLITE_BUSY_TIMEOUT_MS",
    "check_engine",
    "check_ready",
    "configure_sqlite",
    "dispose_engines",
    "engine_state",
    "ensure_tables",
    "limit_lock_waits",
    "make_engine",
    "normalize_url",
    "shared_engine",
    "shared_engine_key",
    "transaction",
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


def _sqlite_pragmas(*, wal: bool, foreign_keys: bool) -> list[str]:
    pragmas = [f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"]
    if foreign_keys:
        pragmas.append("PRAGMA foreign_keys = ON")
    if wal:
        # WAL with synchronous=NORMAL is durable across application crashes;
        # a power loss may drop the last commits (never corrupts the file).
        pragmas += ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"]
    return pragmas


def _configure_sqlite(engine: AsyncEngine, pragmas: list[str]) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()


_CONFIGURED = "lattice_sqlite_configured"  # key in a pooled connection's ``info``


def configure_sqlite(engine: AsyncEngine) -> None:
    """Give a SQLite file engine the caller made the settings Lattice's own engines get.

    What the Agents SDK's ``SQLAlchemySession`` does to an engine it is given,
    plus the synchronous level Lattice documents: each of the engine's
    connections gets ``busy_timeout`` (5 s), ``journal_mode = WAL`` and
    ``synchronous = NORMAL`` before Lattice or anyone else next checks it out
    of the pool, connections the engine opened before this call included (an
    application that created its tables first). Once per engine: one
    ``checkout`` listener, registered once (remembered in its
    :class:`EngineState`), that costs a dictionary lookup per checkout once a
    connection is configured. Nothing for other databases or in-memory
    SQLite, where WAL does not apply. Foreign keys are left as the caller set
    them. Sessions and stores call this unless made with
    ``configure_sqlite=False``.
    """
    if engine.dialect.name != "sqlite" or is_sqlite_memory(engine.url):
        return
    state = engine_state(engine)
    if state.sqlite_configured:
        return
    state.sqlite_configured = True
    pragmas = _sqlite_pragmas(wal=True, foreign_keys=False)

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if _CONFIGURED in record.info:
            return
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()
        # ``info`` lives as long as this DBAPI connection: a reconnect is configured again.
        record.info[_CONFIGURED] = True


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
    hand out the most recently used one first (``pool_use_lifo=True``).
    ``lock_timeout`` (seconds, or ``None`` to wait as long as the server
    does) bounds lock waits (:func:`limit_lock_waits`); the default is
    :data:`DEFAULT_LOCK_TIMEOUT_S` on PostgreSQL and MySQL and the busy
    timeout on SQLite. A missing driver raises ``ImportError`` naming the
    extra to install.
    """
    engine_kwargs = dict(engine_kwargs)
    lock_timeout = engine_kwargs.pop("lock_timeout", _DEFAULT)
    if lock_timeout is not _DEFAULT and lock_timeout is not None:
        check_lock_timeout(lock_timeout)
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
        _configure_sqlite(engine, _sqlite_pragmas(wal=not memory, foreign_keys=True))
        engine_state(engine).sqlite_configured = True
    if lock_timeout is _DEFAULT:
        # SQLite's bound is the busy timeout _configure_sqlite set; a caller
        # who set the server's own option in connect_args keeps it.
        own = names_lock_timeout(kwargs.get("connect_args"))
        lock_timeout = None if backend == "sqlite" or own else DEFAULT_LOCK_TIMEOUT_S
    if lock_timeout is not None:
        limit_lock_waits(engine, lock_timeout)
    return engine


_DEFAULT: Any = object()


def _options_key(engine_kwargs: dict[str, Any]) -> str:
    return repr(sorted(engine_kwargs.items(), key=lambda kv: kv[0]))


# loop -> {(url, options): engine}. The engines of a loop are disposed when the
# loop shuts down (asyncio.run and asyncio.Runner finalise async generators
# first: see _watch_loop), and the loop's entry goes with them. Without that
# the entry would live for ever: its engines' connections refer to the loop,
# which keeps the weak key alive (20 asyncio.run() calls left 20 open server
# connections, or 30 aiosqlite threads; tests/test_hostile_edges.py).
_EngineMap = dict[tuple[str, str], AsyncEngine]
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _EngineMap] = (
    weakref.WeakKeyDictionary()
)
# The watcher of each loop, held here (the loop holds async generators weakly).
_WATCHERS: dict[int, Any] = {}
# Engines made while no loop runs (a session built in synchronous code, used later).
_LOOPLESS: _EngineMap = {}


async def _loop_watcher(loop: asyncio.AbstractEventLoop) -> AsyncIterator[None]:
    """An async generator suspended for the loop's life; its ``finally`` disposes the engines."""
    try:
        yield
    finally:
        _WATCHERS.pop(id(loop), None)
        engines = _SHARED.pop(loop, {})
        for engine in engines.values():
            await engine.dispose()


def _watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Dispose of ``loop``'s shared engines when it shuts down.

    ``asyncio.run`` and ``asyncio.Runner`` finalise the async generators a loop
    has started (``shutdown_asyncgens``): a suspended one runs code at shutdown.
    """
    if id(loop) in _WATCHERS:
        return
    watcher = _loop_watcher(loop)
    _WATCHERS[id(loop)] = watcher

    async def start() -> None:
        await watcher.__anext__()

    loop.create_task(start())


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
    engines = _LOOPLESS if loop is None else _SHARED.get(loop)
    if engines is None:
        assert loop is not None
        engines = _SHARED[loop] = {}
        _watch_loop(loop)
    engine = engines.get(key)
    if engine is None:
        engine = engines[key] = make_engine(normalize_url(url), **kwargs)
    return engine


async def dispose_engines() -> None:
    """Dispose of every engine Lattice shared from a URL on this event loop.

    Engines passed in by the application are never touched. A loop's shared
    engines are also disposed when the loop shuts down through
    ``asyncio.run`` or ``asyncio.Runner``, so a script that forgets this call
    leaks nothing; calling it is still the way to close them earlier, or on
    a loop you close yourself.
    """
    loop = _running_loop()
    engines = list(_LOOPLESS.values())
    _LOOPLESS.clear()
    if loop is not None:
        engines += list(_SHARED.pop(loop, {}).values())
    for other in list(_SHARED):
        if other.is_closed():
            # A loop closed without finalising its async generators: its
            # engines cannot be awaited any more; let them go to the collector.
            _SHARED.pop(other, None)
    for engine in engines:
        await engine.dispose()


@dataclass
class EngineState:
    """What Lattice remembers about one engine: created tables, locks, read mode."""

    created: set[Any] = field(default_factory=set)
    #: The engine passed :func:`check_ready`.
    ready: bool = False
    #: Lattice's SQLite connection settings are registered on this engine
    #: (:func:`configure_sqlite`, or an engine :func:`make_engine` made).
    sqlite_configured: bool = False
    #: Writes committed through Lattice on this engine (when to prune the journal).
    writes: int = 0
    max_packet: int | None = None
    #: A Galera node (``wsrep_on``, :func:`check_ready`): COMMIT goes alone (docs/scale.md).
    galera: bool = False
    #: Run sessions' statements on the driver connection (:mod:`lattice.drivers`)
    #: when the driver has a fast path; False keeps them on SQLAlchemy's execution.
    fast_path: bool = True
    #: Testing hook of the fast path, None (no cost) unless a test sets it:
    #: awaited as ``trace(when, sql, connection_info)`` before each statement
    #: (``"before_cursor_execute"``), after it (``"after_cursor_execute"``) and
    #: before COMMIT (``"commit"``, sql None). ``connection_info`` is the pool
    #: record's ``info`` dict. tests/reliability.py pauses and cancels calls there.
    trace: Callable[[str, str | None, dict[Any, Any]], Awaitable[None]] | None = None
    # One lock per loop: asyncio locks belong to the loop they first wait on.
    _create_locks: LoopLocks = field(default_factory=LoopLocks)
    _use_lock: CrossLoopLock | None = None
    _write_locks: LoopLocks | None = None

    def create_lock(self) -> asyncio.Lock:
        return self._create_locks.get()

    def exclusive(self) -> AbstractAsyncContextManager[Any]:
        """Serialise use of an engine that has one shared connection (``StaticPool``)."""
        # A plain object, not a generator-based context manager: it is entered
        # on every call, and costs nothing when there is no lock.
        if self._use_lock is None:
            return NO_LOCK
        return self._use_lock

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
            return NO_LOCK
        return self._write_locks.get()


_STATE: weakref.WeakKeyDictionary[Any, EngineState] = weakref.WeakKeyDictionary()


def engine_state(engine: AsyncEngine) -> EngineState:
    """The state Lattice keeps for ``engine`` (made on first use)."""
    sync_engine = engine.sync_engine
    state = _STATE.get(sync_engine)
    if state is None:
        state = EngineState()
        if isinstance(sync_engine.pool, StaticPool):
            # One DBAPI connection shared by every checkout: transactions of
            # concurrent calls would interleave on it, so they take turns.
            state._use_lock = CrossLoopLock()
        elif sync_engine.dialect.name == "sqlite":
            state._write_locks = LoopLocks()
        _STATE[sync_engine] = state
    return state


_CREATE_ATTEMPTS = 12  # create_tables rounds (more than the tables and indexes to make)


async def ensure_tables(engine: AsyncEngine, state: EngineState, tables: Any) -> None:
    """Create ``tables`` (a :class:`lattice.schema.LatticeTables`) if missing, once per engine."""
    if tables in state.created:
        return
    async with state.create_lock():
        if tables in state.created:
            return
        async with state.exclusive():
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    async with engine.begin() as conn:
                        await conn.run_sync(tables.metadata.create_all)
                    break
                except (IntegrityError, ProgrammingError, OperationalError):
                    # Another process made a table or index meanwhile: retry.
                    if attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.02 * (attempt + 1))
        state.created.add(tables)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a real transaction, whatever the engine's isolation level.

    ``engine.begin()`` on an engine in AUTOCOMMIT opens no transaction on the
    server: every statement would commit on its own, and the row locks that
    keep batches whole and pops exactly-once would last one statement. So
    such a connection is switched to the database's default level for this
    checkout (SQLAlchemy puts it back when the connection returns to the pool).
    """
    async with engine.connect() as conn:
        if _compat.engine_autocommits(engine):
            await conn.execution_options(isolation_level=engine.dialect.default_isolation_level)
        async with conn.begin():
            yield conn


async def check_ready(engine: AsyncEngine, state: EngineState) -> None:
    """Refuse, once per engine, a connection setup Lattice cannot be safe on.

    MySQL: the connection's character set must be utf8mb4 (see
    :attr:`lattice.dialects.Rules.connection_charset`); learns ``EngineState.galera``.

    Raises:
        ValueError: naming the setting and what to write instead.
    """
    if state.ready:
        return
    required = rules(engine.dialect).connection_charset
    if required is not None:
        async with state.exclusive(), engine.connect() as conn:
            charsets = "@@character_set_client, @@character_set_connection, @@character_set_results"
            row = (await conn.exec_driver_sql(f"SELECT {charsets}")).one()
            galera = galera_from((await conn.exec_driver_sql(GALERA_PROBE)).all())
        wrong = [value for value in row if value != required]
        if wrong:
            raise ValueError(
                f"this MySQL engine's connections use charset {wrong[0]!r}; Lattice needs "
                f"charset={required} (add ?charset={required} to the URL, or remove the "
                "charset option): under other charsets escaped values are not safe"
            )
        state.galera = galera
    state.ready = True
