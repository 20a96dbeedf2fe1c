"""Promises that must hold at the edges production reaches (issue 12).

* MySQL/MariaDB: hostile ids stay inside their literal whatever the server's
  ``sql_mode`` (``NO_BACKSLASH_ESCAPES``), and a connection charset other than
  utf8mb4 is refused up front.
* An in-memory SQLite database survives a cancelled read (its one connection
  *is* the database), for sessions and the store, and one object used from two
  threads with their own loops.
* An engine in AUTOCOMMIT still gets Lattice's own transactions.
"""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lattice import SessionStore, SQLAlchemySession, SQLiteSession, _compat
from lattice.schema import LatticeTables
from tests.conftest import MYSQL_URL, temporary_tables
from tests.reliability import engine_for, session_on, stored, stored_count

HOSTILE_IDS = [
    "' OR 1=1 -- ",
    "x\\' OR 1=1 -- ",
    "\\'; DELETE FROM {messages}; COMMIT; -- ",
    "'; DELETE FROM {messages}; COMMIT; -- ",
    "\\",
    "\\\\'",
]


def _sid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


# -- MySQL: values stay values ---------------------------------------------------------


@pytest.mark.only_backends("mysql")
@pytest.mark.parametrize("raw", HOSTILE_IDS)
async def test_hostile_ids_stay_in_their_literal_with_no_backslash_escapes(
    backend: str, raw: str
) -> None:
    """With NO_BACKSLASH_ESCAPES a backslash-escaped literal ends early: it must not happen."""
    init = "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"
    async with engine_for(MYSQL_URL, connect_args={"init_command": init}) as eng:
        async with temporary_tables(eng) as tables:
            hostile_id = raw.format(messages=tables.messages.name)
            victim = session_on(eng, tables, "victim")
            await victim.add_items([{"secret": 1}, {"secret": 2}])
            hostile = session_on(eng, tables, hostile_id)
            assert await hostile.get_items() == []
            assert await hostile.get_items(limit=5) == []
            assert await hostile.pop_item() is None
            await hostile.clear_session()
            await hostile.add_items([{"mine": True}])
            assert await hostile.get_items() == [{"mine": True}]
            assert await hostile.pop_item() == {"mine": True}
            store = SessionStore(
                eng, sessions_table=tables.sessions.name, messages_table=tables.messages.name
            )
            assert await store.get_info(hostile_id) is not None
            assert await store.count(prefix=hostile_id[:3]) <= 1
            assert await stored(eng, tables, "victim") == [{"secret": 1}, {"secret": 2}]
            assert await stored_count(eng, tables, "victim") == 2


@pytest.mark.only_backends("mysql")
@pytest.mark.parametrize("charset", ["gbk", "sjis", "cp932", "latin1"])
async def test_a_connection_charset_other_than_utf8mb4_is_refused(
    backend: str, tables: LatticeTables, charset: str
) -> None:
    url = make_url(MYSQL_URL).update_query_dict({"charset": charset})
    async with engine_for(url) as eng:
        session = session_on(eng, tables, _sid("charset"))
        with pytest.raises(ValueError, match=f"charset.*{charset}.*utf8mb4"):
            await session.add_items([{"a": 1}])
        with pytest.raises(ValueError, match="utf8mb4"):
            await session.get_items()
        store = SessionStore(
            eng, sessions_table=tables.sessions.name, messages_table=tables.messages.name
        )
        with pytest.raises(ValueError, match="utf8mb4"):
            await store.list_sessions()


# -- in-memory SQLite survives cancellation ----------------------------------------------


async def _cancel_reads(call: Any, times: int = 30) -> None:
    for attempt in range(times):
        task = asyncio.ensure_future(call())
        # Let it reach the driver, sometimes further.
        for _ in range(attempt % 4):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def test_cancelling_reads_keeps_an_in_memory_session() -> None:
    session = SQLiteSession(_sid("memory"))
    items = [{"n": n, "pad": "x" * 200} for n in range(2000)]
    await session.add_items(items)
    await _cancel_reads(session.get_items)
    await _cancel_reads(lambda: session.get_items(limit=5))
    assert await session.get_items() == items
    await session.add_items([{"after": True}])
    assert await session.pop_item() == {"after": True}


async def test_cancelling_reads_keeps_an_in_memory_store() -> None:
    async with SessionStore.from_url("sqlite+aiosqlite:///:memory:", create_tables=True) as store:
        for n in range(50):
            await store.session(f"s{n}").add_items([{"n": n}])
        await _cancel_reads(lambda: store.list_sessions(limit=50))
        await _cancel_reads(store.count)
        assert await store.count() == 50
        assert await store.session("s3").get_items() == [{"n": 3}]


async def test_cancelling_an_export_keeps_an_in_memory_store(tmp_path: Path) -> None:
    async with SessionStore.from_url("sqlite+aiosqlite:///:memory:", create_tables=True) as store:
        for n in range(6):
            await store.session(f"s{n}").add_items([{"n": n, "i": i} for i in range(1200)])
        out = io.StringIO()
        await _cancel_reads(lambda: store.export_jsonl(out), times=40)
        await _cancel_reads(lambda: store.export_jsonl(tmp_path / "x.jsonl"), times=12)
        assert await store.count() == 6
        result = await store.export_jsonl(tmp_path / "whole.jsonl")
        assert (result.sessions, result.items) == (6, 7200)


def test_one_in_memory_session_used_from_two_threads_with_their_own_loops() -> None:
    session = SQLiteSession(_sid("threads"))
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        async def run() -> None:
            for n in range(100):
                await session.add_items([{"t": tag, "n": n}, {"t": tag, "n": n, "second": True}])
                await session.get_items(limit=3)

        try:
            asyncio.run(run())
        except BaseException as exc:  # the thread's failure must reach the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    items = asyncio.run(session.get_items())
    assert len(items) == 400
    for first, second in zip(items[::2], items[1::2], strict=True):
        assert second == {**first, "second": True}, "a batch was interleaved"


# -- an AUTOCOMMIT engine still gets transactions -------------------------------------------


@pytest.mark.only_backends("sqlite_file", "postgres", "mysql")  # a second engine on the data
async def test_an_autocommit_engine_keeps_every_promise(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    auto = create_async_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=25)
    try:
        assert _compat.engine_autocommits(auto)
        sid = _sid("auto")
        first = SQLAlchemySession(
            sid,
            engine=auto,
            sessions_table=tables.sessions.name,
            messages_table=tables.messages.name,
        )
        await first.add_items([{"n": n} for n in range(300)])
        sessions = [
            SQLAlchemySession(
                sid,
                engine=auto,
                sessions_table=tables.sessions.name,
                messages_table=tables.messages.name,
            )
            for _ in range(20)
        ]

        async def drain(session: SQLAlchemySession) -> list[int]:
            got = []
            while (item := await session.pop_item()) is not None:
                got.append(item["n"])
            return got

        popped = [n for got in await asyncio.gather(*(drain(s) for s in sessions)) for n in got]
        assert sorted(popped) == list(range(300)), "an item was popped twice or lost"
        assert await stored_count(engine, tables, sid) == 0

        await asyncio.gather(
            *(s.add_items([{"w": w, "i": i} for i in range(5)]) for w, s in enumerate(sessions))
        )
        items = await stored(engine, tables, sid)
        for start in range(0, 100, 5):
            assert len({it["w"] for it in items[start : start + 5]}) == 1, "batch interleaved"
        assert await stored_count(engine, tables, sid) == 100

        store = SessionStore(
            auto, sessions_table=tables.sessions.name, messages_table=tables.messages.name
        )
        await asyncio.gather(*(store.set_metadata(sid, {f"k{k}": k}) for k in range(40)))
        info = await store.get_info(sid)
        assert info is not None and len(info.metadata) == 40, "a metadata merge was lost"
    finally:
        await auto.dispose()
