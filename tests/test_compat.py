"""Every private third-party name ``lattice._compat`` relies on still exists and behaves.

An upgrade of SQLAlchemy, aiosqlite or Alembic that removes or changes one
fails here, by name, rather than somewhere in a session's write path.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from alembic import context as alembic_context
from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import _ConnectionFairy

from lattice import _compat
from lattice.engines import make_engine


@pytest.mark.parametrize("dialect", [postgresql.dialect(), mysql.dialect(), sqlite.dialect()])
def test_positional_bind_names_follow_the_sql(dialect: Any) -> None:
    stmt = select(text("1")).where(bindparam("b") == bindparam("a")).limit(bindparam("c"))
    compiled = stmt.compile(dialect=dialect)
    names = _compat.positional_bind_names(compiled)
    if dialect.paramstyle in ("numeric", "numeric_dollar", "named", "pyformat"):
        # Not positional: no order to keep (nothing relies on it there).
        assert names == () or set(names) == {"a", "b", "c"}
    else:
        assert names[:3] == ("b", "a", "c")


async def _fairy(engine: AsyncEngine) -> Any:
    return await _compat.pool_checkout(engine.sync_engine.pool)


async def test_pool_checkout_return_idle_and_close(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    pool: Any = engine.sync_engine.pool
    try:
        fairy = await _fairy(engine)
        assert isinstance(fairy, _ConnectionFairy)
        assert hasattr(fairy, "_close_special")
        assert pool.checkedout() == 1
        raw = fairy.driver_connection
        await _compat.return_idle_connection(fairy, pool)
        assert pool.checkedout() == 0 and pool.checkedin() == 1
        again = await _fairy(engine)
        assert again.driver_connection is raw, "it went back on the queue"
        again.invalidate()
        await _compat.close_connection(again)
        assert pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_invalidate_pool_recycles_older_connections(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'i.db'}")
    pool: Any = engine.sync_engine.pool
    try:
        older = await _fairy(engine)
        await _compat.return_idle_connection(older, pool)
        victim = await _fairy(engine)
        before = pool._invalidate_time
        _compat.invalidate_pool(pool, victim, None)
        assert pool._invalidate_time > before, "Pool._invalidate no longer marks the pool"
        assert not victim.is_valid
        await _compat.close_connection(victim)
    finally:
        await engine.dispose()


async def test_translate_driver_error_maps_to_the_dbapi_class(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    try:
        fairy = await _fairy(engine)
        translated = _compat.translate_driver_error(
            fairy.dbapi_connection, sqlite3.OperationalError("no such table: x")
        )
        assert isinstance(translated, engine.dialect.loaded_dbapi.Error)
        # Something the adapter does not know comes back as it is, or as a DB-API error.
        odd = ValueError("odd")
        assert _compat.translate_driver_error(object(), odd) is odd
        await _compat.adapter_rollback(fairy.dbapi_connection)
        await _compat.return_idle_connection(fairy, engine.sync_engine.pool)
    finally:
        await engine.dispose()


async def test_sqlite_thread_call_runs_on_the_connection_thread(tmp_path: Path) -> None:
    conn = await aiosqlite.connect(tmp_path / "a.db")
    try:
        assert _compat.sqlite_thread_calls_supported(conn)

        def work(db: sqlite3.Connection, value: int) -> tuple[int, bool]:
            assert isinstance(db, sqlite3.Connection)
            return db.execute("SELECT ?", (value,)).fetchone()[0], db.in_transaction

        assert await _compat.sqlite_thread_call(conn, work, 7) == (7, False)
        assert not _compat.sqlite_thread_calls_supported(object())
    finally:
        await conn.close()


def test_alembic_proxy_is_put_back() -> None:
    class Env:
        installed = 0

        def _install_proxy(self) -> None:
            Env.installed += 1
            alembic_context._proxy = self  # type: ignore[attr-defined]

    outer = Env()
    saved = _compat.alembic_proxy(alembic_context)
    try:
        alembic_context._proxy = outer  # type: ignore[attr-defined]
        assert _compat.alembic_proxy(alembic_context) is outer
        alembic_context._proxy = object()  # type: ignore[attr-defined]
        _compat.restore_alembic_proxy(alembic_context, outer)
        assert Env.installed == 1 and _compat.alembic_proxy(alembic_context) is outer
        _compat.restore_alembic_proxy(alembic_context, outer)
        assert Env.installed == 1, "nothing to do when it is still installed"
    finally:
        alembic_context._proxy = saved  # type: ignore[attr-defined]


async def test_sqlalchemy_still_wraps_disconnects_the_way_lattice_does(tmp_path: Path) -> None:
    """The translation chain the fast path copies: adapter -> is_disconnect -> DBAPIError."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    try:
        fairy = await _fairy(engine)
        err = _compat.translate_driver_error(
            fairy.dbapi_connection, sqlite3.ProgrammingError("Cannot operate on a closed database.")
        )
        wrapped = DBAPIError.instance(
            "SELECT 1", (), err, engine.dialect.loaded_dbapi.Error, dialect=engine.dialect
        )
        assert isinstance(wrapped, DBAPIError) and wrapped.orig is err
        await _compat.return_idle_connection(fairy, engine.sync_engine.pool)
        await asyncio.sleep(0)
    finally:
        await engine.dispose()


async def test_sleep_in_sync_code_lets_the_loop_run_under_run_sync(tmp_path: Path) -> None:
    """Inside run_sync the wait yields to the event loop (another task runs meanwhile)."""
    from sqlalchemy.util import concurrency

    assert callable(concurrency.in_greenlet)
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    ticks: list[int] = []

    async def ticker() -> None:
        for n in range(3):
            ticks.append(n)
            await asyncio.sleep(0.005)

    try:
        async with engine.connect() as conn:
            task = asyncio.ensure_future(ticker())
            await conn.run_sync(lambda _: _compat.sleep_in_sync_code(0.05))
            assert ticks == [0, 1, 2], "the loop ran while the sync code waited"
            await task
    finally:
        await engine.dispose()
    _compat.sleep_in_sync_code(0)  # outside a greenlet: a plain sleep


async def test_run_in_greenlet_lets_sync_code_await_and_reuses_its_greenlet() -> None:
    """SQLAlchemy's await_only works inside, outcomes and contextvars pass, greenlets are reused."""
    import contextvars

    import greenlet  # type: ignore[import-untyped]
    from sqlalchemy.util import await_only

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller's")
    used: list[Any] = []

    def sync(pause: float, tag: str) -> str:
        used.append(greenlet.getcurrent())
        await_only(asyncio.sleep(pause))
        return f"{tag} {var.get()}"

    assert await _compat.run_in_greenlet(sync, 0, "a") == "a caller's"
    assert await _compat.run_in_greenlet(sync, 0, "b") == "b caller's"
    assert used[0] is used[1], "the second call reused the first one's greenlet"
    # Two at once, both waiting: each has a greenlet of its own.
    assert await asyncio.gather(
        _compat.run_in_greenlet(sync, 0.01, "c"), _compat.run_in_greenlet(sync, 0, "d")
    ) == ["c caller's", "d caller's"]
    assert used[2] is not used[3]

    def fails() -> None:
        await_only(asyncio.sleep(0))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await _compat.run_in_greenlet(fails)

    def awaits_a_failure() -> None:
        async def broken() -> None:
            raise KeyError("inner")

        try:
            await_only(broken())
        except KeyError:
            raise LookupError("seen inside") from None

    with pytest.raises(LookupError, match="seen inside"):
        await _compat.run_in_greenlet(awaits_a_failure)

    # A cancellation while the sync code waits reaches it, as with greenlet_spawn.
    task = asyncio.ensure_future(_compat.run_in_greenlet(sync, 10, "e"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _compat.run_in_greenlet(sync, 0, "f") == "f caller's"


async def test_run_in_greenlet_keeps_nothing_of_a_finished_call() -> None:
    """A waiting runner holds no reference to the last call's function, arguments or result."""
    import gc
    import weakref

    class Thing:
        pass

    def sync(_arg: Thing) -> Thing:
        return Thing()

    arg = Thing()
    out = await _compat.run_in_greenlet(sync, arg)
    refs = [weakref.ref(arg), weakref.ref(out)]
    del arg, out
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
