"""Every call Lattice makes into a third-party private (or undocumented) API, and only here.

Like Alembic's ``util/sqla_compat.py``: each helper says what it relies on,
checks for it where a fallback exists, and ``tests/test_compat.py`` asserts
that each name still exists and behaves as relied on, so an upgrade of
SQLAlchemy, aiosqlite or Alembic that removes one fails there, loudly, and
not somewhere in a session's write path.

Names used:

* SQLAlchemy: ``Dialect._on_connect_isolation_level`` (an engine made with
  ``isolation_level="AUTOCOMMIT"``), ``SQLCompiler.positiontup`` (the order of positional binds),
  ``sqlalchemy.util.greenlet_spawn`` (run pool code that may do I/O from
  asyncio), ``_ConnectionFairy._close_special`` (return a connection known
  to be idle without the pool's reset), ``Pool._invalidate`` (invalidate a
  connection and every older one, as ``Connection`` does on a disconnect),
  the asyncio adapters' ``_handle_exception`` (the dialect's own mapping of
  driver exceptions to its DB-API classes).
* aiosqlite: ``Connection._execute`` and ``Connection._conn`` (run one
  function on the connection's thread with the ``sqlite3`` connection).
* SQLAlchemy: ``sqlalchemy.util.concurrency.in_greenlet`` and ``await_only``
  (wait in synchronous code that runs under ``run_sync``, such as a
  migration, without blocking the event loop).
* SQLAlchemy: the greenlet protocol of ``await_only`` (a greenlet with
  ``__sqlalchemy_greenlet_provider__ = True`` may call it, announced for
  third-party greenlets in the 2.0.31 changelog; it switches to the
  greenlet's ``parent``, ``driver`` in older releases), for :func:`run_in_greenlet`.
* Alembic: ``alembic.context._proxy`` / ``EnvironmentContext._install_proxy``
  (put back the application's own environment after Lattice's ran inside it).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import greenlet  # type: ignore[import-untyped]
from sqlalchemy.util import await_only, greenlet_spawn

_R = TypeVar("_R")
#: Runner greenlets kept per thread for reuse.
_MAX_IDLE_RUNNERS = 8

__all__ = [
    "adapter_rollback",
    "alembic_proxy",
    "close_connection",
    "engine_autocommits",
    "greenlet_spawn",
    "invalidate_pool",
    "pool_checkout",
    "positional_bind_names",
    "restore_alembic_proxy",
    "return_idle_connection",
    "run_in_greenlet",
    "sleep_in_sync_code",
    "sqlite_thread_call",
    "sqlite_thread_calls_supported",
    "translate_driver_error",
]


def engine_autocommits(engine: Any) -> bool:
    """True when ``engine`` hands out connections in AUTOCOMMIT.

    Either way of asking SQLAlchemy for it: ``create_async_engine(...,
    isolation_level="AUTOCOMMIT")`` (kept as the dialect's
    ``_on_connect_isolation_level``) or ``engine.execution_options(
    isolation_level="AUTOCOMMIT")`` (the engine's execution options).
    """
    sync_engine = getattr(engine, "sync_engine", engine)
    options = sync_engine.get_execution_options()
    level = options.get("isolation_level") or getattr(
        sync_engine.dialect, "_on_connect_isolation_level", None
    )
    return level == "AUTOCOMMIT"


def positional_bind_names(compiled: Any) -> tuple[str, ...]:
    """The bind parameter names of a compiled statement, in positional order."""
    return tuple(compiled.positiontup or ())


async def pool_checkout(pool: Any) -> Any:
    """Check a connection out of a (synchronous-facing) SQLAlchemy pool from asyncio."""
    return await run_in_greenlet(pool.connect)


def _queue_has_room(pool: Any) -> bool:
    """True when a connection given back to ``pool`` is queued, not closed (no I/O)."""
    size = getattr(pool, "size", None)
    checkedin = getattr(pool, "checkedin", None)
    return callable(size) and callable(checkedin) and bool(checkedin() < size())


async def return_idle_connection(fairy: Any, pool: Any) -> None:
    """Give back a connection known to be idle, skipping the pool's reset-on-return.

    The pool's reset would be a ROLLBACK round trip (a thread hop on SQLite)
    on a connection that just committed or rolled back; this is what
    SQLAlchemy's ``Connection`` does after ending its own transaction. When
    the queue has room the connection only goes back on it (nothing to
    await, so no greenlet hand-off: about 30 us of a 340 us indexed read).
    """
    if _queue_has_room(pool):
        fairy._close_special(transaction_reset=True)
    else:
        await greenlet_spawn(fairy._close_special, transaction_reset=True)


async def close_connection(fairy: Any) -> None:
    """Close a checked-out connection's record (already invalidated or to be closed)."""
    await greenlet_spawn(fairy.close)


def invalidate_pool(pool: Any, fairy: Any, exc: BaseException | None) -> None:
    """Invalidate ``fairy`` and every connection the pool made before it (a disconnect).

    As SQLAlchemy's ``Connection`` does on a disconnect: connections made
    before this one are recycled on their next checkout (a server restart
    killed them all), and this one is closed now.
    """
    pool._invalidate(fairy, exc)


def translate_driver_error(adapter: Any, exc: Exception) -> Exception:
    """The dialect's own DB-API exception for a raw driver exception (or ``exc`` itself).

    SQLAlchemy's asyncio adapters (asyncpg, aiosqlite, aiomysql, ...) map
    their driver's exceptions to DB-API classes in ``_handle_exception``,
    which always raises.
    """
    handle = getattr(adapter, "_handle_exception", None)
    if handle is None:
        return exc
    try:
        handle(exc)
    except Exception as translated:
        return translated
    return exc


async def adapter_rollback(adapter: Any) -> None:
    """Roll back through SQLAlchemy's DB-API adapter, so its bookkeeping agrees."""
    await greenlet_spawn(adapter.rollback)


def sqlite_thread_calls_supported(conn: Any) -> bool:
    """True when aiosqlite can run a function on its thread (``Connection._execute``)."""
    return callable(getattr(conn, "_execute", None)) and hasattr(conn, "_conn")


async def sqlite_thread_call(conn: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(sqlite3_connection, *args)`` on aiosqlite's thread, in one hand-off."""
    return await conn._execute(fn, conn._conn, *args)


def alembic_proxy(context_module: Any) -> Any:
    """The ``EnvironmentContext`` currently installed as ``alembic.context``, if any."""
    return getattr(context_module, "_proxy", None)


def restore_alembic_proxy(context_module: Any, outer: Any) -> None:
    """Install ``outer`` again as ``alembic.context`` if another one replaced it."""
    if outer is not None and alembic_proxy(context_module) is not outer:
        outer._install_proxy()


def sleep_in_sync_code(seconds: float) -> None:
    """Wait ``seconds`` in synchronous code, yielding to the event loop under ``run_sync``.

    A migration runs as synchronous code inside ``AsyncConnection.run_sync``
    (a greenlet on the event loop's thread): ``time.sleep`` there would stop
    every other task of the loop, including the migrator it waits for.
    """
    from sqlalchemy.util import concurrency

    in_greenlet = getattr(concurrency, "in_greenlet", None)
    if in_greenlet is not None and in_greenlet():
        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


# -- pool checkout in a reused greenlet -------------------------------------------


class _Done:
    """What a runner greenlet hands back when its function has returned or raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


class _Runner(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet SQLAlchemy's ``await_only`` accepts, reused from call to call.

    ``await_only`` asks the current greenlet for ``__sqlalchemy_greenlet_provider__``
    and switches to its ``parent`` (SQLAlchemy 2.1) or ``driver`` (2.0) with
    the awaitable; ``greenlet_spawn`` makes a new greenlet per call for this,
    about 20 us, where switching into a waiting one costs about 1 us.
    """

    __sqlalchemy_greenlet_provider__ = True

    def __init__(self) -> None:
        super().__init__(self._serve)
        self.driver: Any = None

    def _serve(self, job: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        while True:
            fn, args = job
            try:
                done = _Done(fn(*args), None)
            except greenlet.GreenletExit:
                raise  # the runner itself is being discarded
            except BaseException as exc:
                done = _Done(None, exc)
            # Nothing of this call stays referenced while the runner waits
            # (the caller empties ``done``): a checked-in connection included.
            del fn, args, job
            job = self.parent.switch(done)


_RUNNERS = threading.local()  # a greenlet runs on the thread that made it only


async def run_in_greenlet(fn: Callable[..., _R], *args: Any) -> _R:
    """``greenlet_spawn(fn, *args)`` on a reused greenlet: ``fn`` may ``await_only``.

    A runner busy with a call that is waiting for I/O is not shared: a
    concurrent call takes another idle runner, or makes one.
    """
    idle: list[_Runner] | None = getattr(_RUNNERS, "idle", None)
    if idle is None:
        idle = _RUNNERS.idle = []
    runner = idle.pop() if idle else _Runner()
    here = greenlet.getcurrent()
    runner.parent = here
    runner.driver = here
    runner.gr_context = here.gr_context
    result: Any = runner.switch((fn, args))
    while not isinstance(result, _Done):
        # ``fn`` called await_only(result): wait here, then hand the outcome back.
        try:
            value = await result
        except BaseException:
            result = runner.throw(*sys.exc_info())
        else:
            result = runner.switch(value)
    runner.gr_context = None
    if len(idle) < _MAX_IDLE_RUNNERS:
        idle.append(runner)
    value, error = result.value, result.error
    result.value = result.error = None
    if error is not None:
        raise error
    return value  # type: ignore[no-any-return]
