"""Issue 12 finding 9: a write blocked by another transaction's lock has a bound.

Another connection holds the session's row lock (an open transaction that
updated the row, as a long import or a stuck application transaction
would). Without a lock timeout PostgreSQL waits forever, so
``wait_for(add_items(...), 1)`` never returned: the shielded write went on
waiting, and ``wait_for`` waits for it. With the engine's lock timeout the
write gives up with ``LockTimeoutError`` having written nothing.

Not on in-memory SQLite: it has one connection, so no other transaction can
hold a lock there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lattice import LockTimeoutError, SessionStore
from lattice.engines import DEFAULT_LOCK_TIMEOUT_S, limit_lock_waits, make_engine
from lattice.schema import LatticeTables

from .conftest import backend_url, temporary_tables
from .reliability import engine_for, session_on, stored, stored_count

pytestmark = pytest.mark.only_backends("sqlite_file", "postgres", "mysql")

#: A guard against a hang, far above the bound under test (not a timing assert).
HANG_GUARD_S = 60


@asynccontextmanager
async def row_locked(url: str, tables: LatticeTables, session_id: str) -> AsyncIterator[None]:
    """Hold ``session_id``'s row lock in another connection's open transaction."""
    holder = create_async_engine(url)
    try:
        async with holder.connect() as conn:
            s = tables.sessions
            if holder.dialect.name == "sqlite":
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            await conn.execute(
                update(s).where(s.c.session_id == session_id).values(item_count=s.c.item_count)
            )
            try:
                yield
            finally:
                await conn.rollback()
    finally:
        await holder.dispose()


async def guarded(call: Any) -> asyncio.Task[Any]:
    """Run ``call``; fail the test (instead of hanging it) if it never ends."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=HANG_GUARD_S)
    if task not in done:
        task.cancel()
        pytest.fail(f"the call was still blocked after {HANG_GUARD_S} s")
    return task


async def test_blocked_writes_give_up_and_write_nothing(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    async with engine_for(url, lock_timeout=1) as engine:
        async with temporary_tables(engine) as tables:
            session = session_on(engine, tables, "busy")
            await session.add_items([{"n": 1}, {"n": 2}])
            store = SessionStore(
                engine, sessions_table=tables.sessions.name, messages_table=tables.messages.name
            )
            async with row_locked(url, tables, "busy"):
                calls = [
                    session.add_items([{"n": 3}]),
                    session.pop_item(),
                    session.clear_session(),
                    store.set_metadata("busy", {"k": 1}),
                ]
                for call in calls:
                    task = await guarded(call)
                    with pytest.raises(LockTimeoutError, match=r"'busy'|the sessions") as info:
                        task.result()
                    assert isinstance(info.value, TimeoutError)
            assert await stored(engine, tables, "busy") == [{"n": 1}, {"n": 2}]
            assert await stored_count(engine, tables, "busy") == 2
            assert (await store.get_info("busy")).metadata == {}  # type: ignore[union-attr]
            # Once the lock is gone, the same objects work.
            await session.add_items([{"n": 3}])
            assert await session.pop_item() == {"n": 3}
            await store.set_metadata("busy", {"k": 1})


async def test_wait_for_returns_within_the_lock_timeout(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    async with engine_for(url, lock_timeout=1) as engine:
        async with temporary_tables(engine) as tables:
            session = session_on(engine, tables, "waiting")
            await session.add_items([{"n": 1}])
            async with row_locked(url, tables, "waiting"):
                for call in (session.add_items([{"n": 2}]), session.pop_item()):
                    task = await guarded(asyncio.wait_for(call, 0.2))
                    with pytest.raises(TimeoutError):
                        task.result()
            assert await stored(engine, tables, "waiting") == [{"n": 1}]
            assert await session.get_items() == [{"n": 1}]


async def test_limit_lock_waits_bounds_an_engine_you_make(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    engine = limit_lock_waits(create_async_engine(url), 1)
    try:
        async with temporary_tables(engine) as tables:
            session = session_on(engine, tables, "mine")
            await session.add_items([{"n": 1}])
            async with row_locked(url, tables, "mine"):
                task = await guarded(session.add_items([{"n": 2}]))
                with pytest.raises(LockTimeoutError):
                    task.result()
            assert await session.get_items() == [{"n": 1}]
    finally:
        await engine.dispose()


async def _server_lock_timeout(engine: AsyncEngine) -> str:
    query = (
        "SHOW lock_timeout"
        if engine.dialect.name == "postgresql"
        else ("SELECT @@SESSION.innodb_lock_wait_timeout")
    )
    async with engine.connect() as conn:
        return str((await conn.execute(text(query))).scalar())


@pytest.mark.only_backends("postgres", "mysql")
async def test_engines_lattice_makes_have_the_default_bound(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    expected = "10s" if url.startswith("postgresql") else "10"
    assert DEFAULT_LOCK_TIMEOUT_S == 10
    async with engine_for(url) as engine:
        assert await _server_lock_timeout(engine) == expected
    async with engine_for(url, lock_timeout=None) as engine:  # the server's own setting
        assert await _server_lock_timeout(engine) in ("0", "50")
    async with engine_for(url, lock_timeout=2.5) as engine:
        assert await _server_lock_timeout(engine) == (
            "2500ms" if url.startswith("postgresql") else "2"
        )


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "5", True, 10**9])
async def test_lock_timeout_must_be_positive(backend: str, tmp_path: Path, bad: float) -> None:
    url = backend_url(backend, tmp_path)
    with pytest.raises(ValueError, match="lock timeout must be a positive number"):
        make_engine(url, lock_timeout=bad)
    engine = create_async_engine(url)
    try:
        with pytest.raises(ValueError, match="lock timeout must be a positive number"):
            limit_lock_waits(engine, bad)
    finally:
        await engine.dispose()


@pytest.mark.only_backends("postgres", "mysql")
async def test_a_lock_timeout_in_connect_args_is_kept(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    if url.startswith("postgresql"):
        own: dict[str, Any] = (
            {"options": "-c lock_timeout=300"}
            if "psycopg" in url
            else {"server_settings": {"lock_timeout": "300"}}
        )
        expected = "300ms"
    else:
        own, expected = {"init_command": "SET SESSION innodb_lock_wait_timeout = 3"}, "3"
    async with engine_for(url, connect_args=own) as engine:
        assert await _server_lock_timeout(engine) == expected
