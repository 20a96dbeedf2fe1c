"""Exact outcomes (issue 12): lost COMMIT replies, put-backs, and cancelled pops that cannot undo.

* A write whose COMMIT reply was lost is answered from the write journal, which
  later traffic cannot evict within its window: eight (or any number of) other
  writes to the session before the re-check change nothing.
* A cancelled pop's put-back proves the session is the one it popped from: a
  clear or a delete after the pop keeps the item out, however many writes
  followed, and a session started again under the same id stays clean.
* A cancelled pop whose put-back fails hands its item to the caller in the error.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore
from lattice.errors import PutBackFailedError
from lattice.schema import LatticeTables
from tests.conftest import SERVER_URLS
from tests.reliability import (
    Pause,
    engine_for,
    instrument,
    session_on,
    settle,
    stored,
    stored_count,
)
from tests.test_faults import _lose_commit_reply
from tests.test_faults import proxied as proxied  # the fixture


def _sid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin(server_backend: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(SERVER_URLS[server_backend], isolation_level="AUTOCOMMIT") as eng:
        yield eng


async def _other_writes(admin: AsyncEngine, tables: LatticeTables, sid: str, n: int) -> None:
    other = session_on(admin, tables, sid)
    for i in range(n):
        await other.add_items([{"other": i}])


@pytest.mark.parametrize("others", [8, 30])
async def test_a_lost_append_reply_is_answered_exactly_after_many_writes(
    proxied: Any,
    admin: AsyncEngine,
    others: int,
) -> None:
    proxy, eng, tables = proxied
    sid = _sid("lost-add")
    session = session_on(eng, tables, sid)
    await session.add_items([{"before": 0}])
    done = {"writes": False}

    async def committed() -> bool:
        if len(await stored(admin, tables, sid)) != 3:
            return False
        if not done["writes"]:
            # Before the lost write is re-checked, the session moves on.
            await _other_writes(admin, tables, sid, others)
            done["writes"] = True
        return True

    batch = [{"once": 0}, {"once": 1}]
    await _lose_commit_reply(proxy, lambda: session.add_items(batch), committed)
    items = await stored(admin, tables, sid)
    assert items.count({"once": 0}) == 1, "the batch was stored twice"
    assert items[:3] == [{"before": 0}, *batch]
    assert await stored_count(admin, tables, sid) == 3 + others


async def test_a_lost_pop_reply_is_answered_exactly_after_many_writes(
    proxied: Any,
    admin: AsyncEngine,
) -> None:
    proxy, eng, tables = proxied
    sid = _sid("lost-pop")
    session = session_on(eng, tables, sid)
    await session.add_items([{"n": 0}, {"n": 1}, {"n": 2}])
    done = {"writes": False}

    async def committed() -> bool:
        if {"n": 2} in await stored(admin, tables, sid):
            return False
        if not done["writes"]:
            await _other_writes(admin, tables, sid, 8)
            done["writes"] = True
        return True

    popped = await _lose_commit_reply(proxy, session.pop_item, committed)
    assert popped == {"n": 2}, "the pop handed out the wrong item"
    items = await stored(admin, tables, sid)
    assert items[:2] == [{"n": 0}, {"n": 1}], "a second item was removed"
    assert len(items) == 2 + 8


# -- put-backs prove the session is the same one ---------------------------------------------


async def _pop_cancelled_then(
    engine: AsyncEngine, tables: LatticeTables, sid: str, meanwhile: Any
) -> None:
    """Pop, cancel it at COMMIT, and run ``meanwhile(other_engine)`` before its put-back."""
    instrument(engine)
    session = session_on(engine, tables, sid)
    at_commit = Pause(engine)
    sessions_name = tables.sessions.name
    at_put_back = Pause(
        engine,
        lambda sql: sql.lstrip().upper().startswith("INSERT") and f"{sessions_name} (" in sql,
    )
    try:
        pop = asyncio.ensure_future(session.pop_item())
        await asyncio.wait_for(at_commit.reached.wait(), 20)
        pop.cancel()
        at_commit.release()
        await asyncio.wait_for(at_put_back.reached.wait(), 20)
        async with engine_for(engine.url) as other:
            await meanwhile(other)
        at_put_back.release()
        with pytest.raises(asyncio.CancelledError):
            await pop
        await settle()
    finally:
        at_commit.close()
        at_put_back.close()


@pytest.mark.only_backends("sqlite_file", "postgres", "mysql")  # a second engine on the data
async def test_a_put_back_does_not_resurrect_a_deleted_then_restarted_session(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    sid = _sid("erased")
    await session_on(engine, tables, sid).add_items([{"old": i} for i in range(3)])

    async def erase_and_restart(other: AsyncEngine) -> None:
        store = SessionStore(
            other, sessions_table=tables.sessions.name, messages_table=tables.messages.name
        )
        assert (await store.delete_session(sid)).sessions == 1
        await session_on(other, tables, sid).add_items([{"new": 0}])

    await _pop_cancelled_then(engine, tables, sid, erase_and_restart)
    assert await stored(engine, tables, sid) == [{"new": 0}], "erased history came back"
    assert await stored_count(engine, tables, sid) == 1


@pytest.mark.only_backends("sqlite_file", "postgres", "mysql")
async def test_a_put_back_does_not_undo_a_clear_followed_by_many_writes(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    sid = _sid("cleared")
    await session_on(engine, tables, sid).add_items([{"old": i} for i in range(3)])

    async def clear_then_write(other: AsyncEngine) -> None:
        mirror = session_on(other, tables, sid)
        await mirror.clear_session()
        for i in range(9):
            await mirror.add_items([{"new": i}])

    await _pop_cancelled_then(engine, tables, sid, clear_then_write)
    assert await stored(engine, tables, sid) == [{"new": i} for i in range(9)]
    assert await stored_count(engine, tables, sid) == 9


# -- a put-back that fails hands over the item -----------------------------------------------


@pytest.mark.only_backends("postgres", "mysql")
async def test_a_cancelled_pop_whose_put_back_fails_hands_over_the_item(
    server_backend: str, admin: AsyncEngine, tables: LatticeTables
) -> None:
    url = SERVER_URLS[server_backend]
    if server_backend == "postgres":
        # lock_timeout as a connection option, in the driver's own words.
        options: dict[str, Any] = (
            {"options": "-c lock_timeout=300"}
            if "psycopg" in url
            else {"server_settings": {"lock_timeout": "300"}}
        )
    else:
        options = {"init_command": "SET SESSION innodb_lock_wait_timeout = 1"}
    async with engine_for(url, connect_args=options) as eng:
        instrument(eng)
        sid = _sid("stuck")
        session = session_on(eng, tables, sid)
        await session.add_items([{"n": 0}, {"n": 1}])
        at_commit = Pause(eng)
        sessions_name = tables.sessions.name
        at_put_back = Pause(
            eng,
            lambda sql: sql.lstrip().upper().startswith("INSERT") and f"{sessions_name} (" in sql,
        )
        holder = await admin.connect()
        try:
            pop = asyncio.ensure_future(session.pop_item())
            await asyncio.wait_for(at_commit.reached.wait(), 20)
            pop.cancel()
            at_commit.release()
            await asyncio.wait_for(at_put_back.reached.wait(), 20)
            # Someone holds the session row: the put-back cannot get its lock.
            await holder.execute(text("BEGIN"))
            await holder.execute(
                text(f"UPDATE {sessions_name} SET item_count = item_count WHERE session_id = :s"),
                {"s": sid},
            )
            at_put_back.release()
            with pytest.raises(PutBackFailedError) as caught:
                await asyncio.wait_for(pop, 60)
            assert caught.value.item == {"n": 1}
            assert caught.value.result == {"n": 1}
        finally:
            await holder.execute(text("ROLLBACK"))
            await holder.close()
            at_commit.close()
            at_put_back.close()
            await settle()
        assert await stored(admin, tables, sid) == [{"n": 0}]
