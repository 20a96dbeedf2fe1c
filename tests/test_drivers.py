"""The driver fast path (``lattice.drivers``) against SQLAlchemy's execution path.

Sessions run on the fast path wherever the driver has one, so the whole suite
exercises it. These tests pin what the fast path must not change: what is
stored, byte for byte, and that the SQLAlchemy path (``EngineState.fast_path =
False``, the path of a dialect without a fast path) still works on its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SQLAlchemySession
from lattice.engines import engine_state, make_engine
from lattice.schema import LatticeTables
from tests.reliability import Pause, engine_for, instrument, session_on, stored, stored_count


async def _raw_rows(engine: AsyncEngine, tables: LatticeTables, sid: str) -> list[Any]:
    """The session's rows as the driver returns them (no SQLAlchemy result types)."""
    s, m = tables.sessions, tables.messages
    async with engine.connect() as conn:
        # Found through SQLAlchemy's types: the stored id compares equal.
        found = await conn.execute(select(s.c.session_id).where(s.c.session_id == sid))
        assert found.scalar_one() == sid
        rows = await conn.exec_driver_sql(
            f"SELECT s.session_id, s.created_at, s.updated_at, s.item_count, "
            f"m.message_data, m.created_at FROM {s.name} s JOIN {m.name} m "
            f"ON m.session_id = s.session_id ORDER BY m.id"
        )
        return [
            tuple(row)
            for row in rows
            if (row[0].decode() if isinstance(row[0], bytes) else row[0]) == sid
        ]


def _shape(value: Any) -> Any:
    """What a stored value looks like, independent of its exact content."""
    if isinstance(value, str):
        return ("str", len(value), [i for i, ch in enumerate(value) if not ch.isdigit()])
    return type(value).__name__, getattr(value, "tzinfo", None) is not None


async def test_fast_path_stores_what_sqlalchemy_stores(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    state = engine_state(engine)
    items = [{"i": 1, "text": "héllo 🚀"}, {"i": 2}]
    slow = session_on(engine, tables, "via-sqlalchemy ü")
    fast = session_on(engine, tables, "via-driver ü")
    state.fast_path = False
    try:
        await slow.add_items(items)
    finally:
        state.fast_path = True
    await fast.add_items(items)
    slow_rows = await _raw_rows(engine, tables, slow.session_id)
    fast_rows = await _raw_rows(engine, tables, fast.session_id)
    assert len(slow_rows) == len(fast_rows) == 2
    for slow_row, fast_row in zip(slow_rows, fast_rows, strict=True):
        # The id as the same bytes (VARBINARY on MySQL), the payload identical,
        # the timestamps of the same type and format (SQLite stores text).
        assert slow_row[0] == slow.session_id.encode() or slow_row[0] == slow.session_id
        assert type(fast_row[0]) is type(slow_row[0])
        assert fast_row[3:5] == slow_row[3:5]
        for index in (1, 2, 5):
            assert _shape(fast_row[index]) == _shape(slow_row[index])
    # Each path reads what the other wrote.
    for session in (slow, fast):
        for fast_path in (False, True):
            state.fast_path = fast_path
            assert await session.get_items() == items
    state.fast_path = True


async def test_sqlalchemy_path_still_works(engine: AsyncEngine, tables: LatticeTables) -> None:
    """What a dialect without a fast path runs: every call through ``AsyncConnection``."""
    state = engine_state(engine)
    state.fast_path = False
    try:
        session: SQLAlchemySession = session_on(engine, tables, "slow")
        batch = [{"n": n} for n in range(5)]
        await session.add_items(batch)
        assert await session.get_items(limit=2) == batch[-2:]
        assert await session.pop_item() == batch[-1]
        assert await stored(engine, tables, "slow") == batch[:-1]
        await session.clear_session()
        assert await session.get_items() == []
        assert await session.pop_item() is None
    finally:
        state.fast_path = True


def test_lattice_engines_keep_fifteen_pooled_connections(tmp_path: Path) -> None:
    """Overflow connections were closed and reopened under load (docs/performance.md)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}"
    pool: Any = make_engine(url).sync_engine.pool
    assert (pool.size(), pool._max_overflow) == (15, 0)
    # Pool options given by the application are left alone.
    pool = make_engine(url, pool_size=3).sync_engine.pool
    assert (pool.size(), pool._max_overflow) == (3, 10)


def _refusing_triggers(dialect: str, messages: str) -> list[str]:
    """DDL: triggers by which the database refuses inserting 'boom' and deleting 'stuck'."""
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER {messages}_ins BEFORE INSERT ON {messages} "
            "WHEN NEW.message_data LIKE '%boom%' BEGIN SELECT RAISE(ABORT, 'boom'); END",
            f"CREATE TRIGGER {messages}_del BEFORE DELETE ON {messages} "
            "WHEN OLD.message_data LIKE '%stuck%' BEGIN SELECT RAISE(ABORT, 'stuck'); END",
        ]
    if dialect == "postgresql":
        return [
            f"CREATE FUNCTION {messages}_refuse() RETURNS trigger AS $$ BEGIN "
            "IF TG_OP = 'INSERT' AND NEW.message_data LIKE '%boom%' THEN RAISE EXCEPTION 'boom'; "
            "END IF; IF TG_OP = 'DELETE' AND OLD.message_data LIKE '%stuck%' THEN "
            "RAISE EXCEPTION 'stuck'; END IF; "
            "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER {messages}_refuse BEFORE INSERT OR DELETE ON {messages} "
            f"FOR EACH ROW EXECUTE FUNCTION {messages}_refuse()",
        ]
    return [
        f"CREATE TRIGGER {messages}_ins BEFORE INSERT ON {messages} FOR EACH ROW BEGIN "
        "IF LOCATE('boom', NEW.message_data) > 0 THEN SIGNAL SQLSTATE '45000' "
        "SET MESSAGE_TEXT = 'boom'; END IF; END",
        f"CREATE TRIGGER {messages}_del BEFORE DELETE ON {messages} FOR EACH ROW BEGIN "
        "IF LOCATE('stuck', OLD.message_data) > 0 THEN SIGNAL SQLSTATE '45000' "
        "SET MESSAGE_TEXT = 'stuck'; END IF; END",
    ]


async def test_a_statement_the_database_refuses_leaves_nothing_written(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    """A write whose later statement fails is rolled back whole, and the session goes on.

    On SQLite the whole write transaction runs in one hand-off to the driver's
    thread (``Checkout.steps``), so this is the rollback done there.
    """
    messages = tables.messages.name
    async with engine.begin() as conn:
        for ddl in _refusing_triggers(engine.dialect.name, messages):
            # text(): "%" in the DDL is escaped for drivers of the pyformat paramstyle.
            await conn.execute(text(ddl))
    try:
        session = session_on(engine, tables, "refused")
        await session.add_items([{"n": 0}, {"n": "stuck"}])
        with pytest.raises(DBAPIError, match="boom"):
            await session.add_items([{"n": 1}, {"n": "boom"}, {"n": 2}])
        assert await stored(engine, tables, "refused") == [{"n": 0}, {"n": "stuck"}]
        assert await stored_count(engine, tables, "refused") == 2
        with pytest.raises(DBAPIError, match="stuck"):
            await session.pop_item()
        assert await stored(engine, tables, "refused") == [{"n": 0}, {"n": "stuck"}]
        assert await stored_count(engine, tables, "refused") == 2
        # The same session and engine go on working.
        await session.add_items([{"n": 3}])
        assert await session.pop_item() == {"n": 3}
        assert await session.get_items() == [{"n": 0}, {"n": "stuck"}]
        assert await stored_count(engine, tables, "refused") == 2
    finally:
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f"DROP FUNCTION {messages}_refuse() CASCADE")


@pytest.mark.only_backends("sqlite_file", "postgres", "mysql")  # a second engine on the data
async def test_a_read_leaves_no_transaction_behind(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    """Each read sees what others committed since, and holds nothing once it returns.

    A read that left its transaction open in the pool (MySQL opens one for a
    plain SELECT) would keep its snapshot: the next read on that connection
    would miss later writes, and its metadata lock would block DDL on the table.
    """
    session = session_on(engine, tables, "reader")
    await session.add_items([{"n": 0}])
    async with engine_for(engine.url) as other:
        writer = session_on(other, tables, "reader")
        for n in range(1, 4):
            # Every pooled connection has read the session before the write.
            assert await asyncio.gather(*(session.get_items() for _ in range(5))) == [
                [{"n": i} for i in range(n)]
            ] * 5
            await writer.add_items([{"n": n}])
            assert await session.get_items(limit=1) == [{"n": n}]
        # No connection of the reader's pool holds the table: DDL goes through at once.
        async with other.begin() as conn:
            if other.dialect.name == "mysql":
                await conn.exec_driver_sql("SET SESSION lock_wait_timeout = 5")
            elif other.dialect.name == "postgresql":
                await conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            await conn.exec_driver_sql(
                f"CREATE INDEX {tables.messages.name}_extra ON {tables.messages.name} (created_at)"
            )
    assert await session.get_items() == [{"n": i} for i in range(4)]


async def test_an_append_too_big_for_one_query_still_lands_whole(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    """A batch over 1 MB goes statement by statement on MySQL, not as one query."""
    session = session_on(engine, tables, "big-batch")
    batch = [{"n": n, "text": "é'\\\"" * 100_000} for n in range(5)]  # about 2.5 MB
    await session.add_items([{"n": "first"}])
    await session.add_items(batch)
    assert await stored(engine, tables, "big-batch") == [{"n": "first"}, *batch]
    assert await stored_count(engine, tables, "big-batch") == 6
    assert await session.pop_item() == batch[-1]


async def _wait_for_lock_waiter(engine: AsyncEngine) -> None:
    """On PostgreSQL, wait until some backend waits for a row lock (elsewhere, a moment)."""
    if engine.dialect.name != "postgresql":
        await asyncio.sleep(0.3)
        return
    async with engine_for(engine.url) as watcher:
        for _ in range(500):
            async with watcher.connect() as conn:
                waiting = await conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )
                if waiting.scalar():
                    return
            await asyncio.sleep(0.01)
    raise AssertionError("the second pop never waited for the session's lock")


async def test_a_pop_that_waited_for_another_pop_takes_the_next_item(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    """The second pop began while the first held the session; it gets the next item.

    On PostgreSQL the pop's lock and delete are one statement, whose snapshot
    predates the first pop's commit; it must notice and delete again
    (``Stmt.POP`` of ``lattice.drivers.asyncpg``), not return ``None`` or the first pop's item.
    """
    instrument(engine)
    session = session_on(engine, tables, "queued-pops")
    await session.add_items([{"n": n} for n in range(3)])
    first_at_commit = Pause(engine)
    try:
        first = asyncio.ensure_future(session.pop_item())
        await asyncio.wait_for(first_at_commit.reached.wait(), 20)
        second = asyncio.ensure_future(session_on(engine, tables, "queued-pops").pop_item())
        await _wait_for_lock_waiter(engine)
        first_at_commit.release()
        assert await first == {"n": 2}
        assert await second == {"n": 1}
    finally:
        first_at_commit.close()
    assert await stored(engine, tables, "queued-pops") == [{"n": 0}]
    assert await stored_count(engine, tables, "queued-pops") == 1
