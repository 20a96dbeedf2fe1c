"""A SQLite engine the caller made is configured as Lattice's own are (issue 14).

The Agents SDK's ``SQLAlchemySession`` puts an engine it is given in WAL mode
with a busy timeout; Lattice left such an engine in rollback-journal mode with
no busy timeout, so concurrent writers met "database is locked" at once and
every commit paid the rollback journal's syncs. Now a session or store given a
SQLite file engine sets WAL, a 5 s busy timeout and ``synchronous = NORMAL``
on it, once per engine, unless made with ``configure_sqlite=False``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lattice import SessionStore, SQLAlchemySession
from lattice.engines import SQLITE_BUSY_TIMEOUT_MS

NORMAL = 1  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL


async def _settings(engine: AsyncEngine) -> tuple[str, int, int]:
    async with engine.connect() as conn:
        mode = await conn.scalar(text("PRAGMA journal_mode"))
        timeout = await conn.scalar(text("PRAGMA busy_timeout"))
        sync = await conn.scalar(text("PRAGMA synchronous"))
    return str(mode), int(timeout), int(sync)


def _listeners(engine: AsyncEngine) -> int:
    dispatch = engine.sync_engine.pool.dispatch
    return len(dispatch.connect) + len(dispatch.checkout)


@pytest.fixture
async def file_engine(tmp_path: Path) -> AsyncEngine:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'caller.db'}")
    yield engine  # type: ignore[misc]
    await engine.dispose()


async def test_a_callers_file_engine_gets_wal_and_a_busy_timeout(file_engine: AsyncEngine) -> None:
    before = _listeners(file_engine)
    session = SQLAlchemySession("s", engine=file_engine, create_tables=True)
    other = SQLAlchemySession("t", engine=file_engine)
    await session.add_items([{"role": "user", "content": "hi"}])
    await other.add_items([{"role": "user", "content": "hello"}])
    assert await _settings(file_engine) == ("wal", SQLITE_BUSY_TIMEOUT_MS, NORMAL)
    assert _listeners(file_engine) == before + 1  # once per engine
    assert await session.get_items() == [{"role": "user", "content": "hi"}]


async def test_connections_opened_before_the_session_are_configured_too(
    file_engine: AsyncEngine,
) -> None:
    """An application that used its engine first (its own tables, a migration)."""
    async with file_engine.connect() as conn:  # now pooled, opened unconfigured
        await conn.execute(text("CREATE TABLE app (x INTEGER)"))
        await conn.commit()
    assert (await _settings(file_engine))[2] != NORMAL
    session = SQLAlchemySession("s", engine=file_engine, create_tables=True)
    await session.add_items([{"n": 1}])
    assert await _settings(file_engine) == ("wal", SQLITE_BUSY_TIMEOUT_MS, NORMAL)


async def test_configure_sqlite_false_leaves_the_engine_alone(file_engine: AsyncEngine) -> None:
    before = _listeners(file_engine)
    session = SQLAlchemySession("s", engine=file_engine, create_tables=True, configure_sqlite=False)
    await session.add_items([{"role": "user", "content": "hi"}])
    mode, _, sync = await _settings(file_engine)  # (Python's sqlite3 waits 5 s by default)
    assert (mode, sync) == ("delete", 2)  # FULL
    assert _listeners(file_engine) == before


async def test_a_store_configures_its_engine_or_leaves_it_alone(tmp_path: Path) -> None:
    for opt_in, expected in ((True, "wal"), (False, "delete")):
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / f'{opt_in}.db'}")
        try:
            store = SessionStore(engine, create_tables=True, configure_sqlite=opt_in)
            await store.session("s").add_items([{"n": 1}])
            assert (await _settings(engine))[0] == expected
        finally:
            await engine.dispose()


async def test_in_memory_engines_are_not_touched() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        before = _listeners(engine)
        SQLAlchemySession("s", engine=engine, create_tables=True)
        assert _listeners(engine) == before
    finally:
        await engine.dispose()


def test_configure_sqlite_must_be_a_bool(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(TypeError, match="configure_sqlite must be a bool"):
        SQLAlchemySession("s", engine=engine, configure_sqlite="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="configure_sqlite must be a bool"):
        SessionStore(engine, configure_sqlite=1)  # type: ignore[arg-type]
