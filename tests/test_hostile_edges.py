"""The smaller edges of issue 12: engines freed with their loop, typed metadata filters,
imports that are atomic and checked, reads with absurd limits, tampered cursors,
long table names, and a store that recovers after its connections died.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore, SQLAlchemySession, dispose_engines
from lattice.schema import LatticeTables, lattice_tables
from tests.conftest import POSTGRES_URL, backend_url, temporary_tables
from tests.reliability import engine_for, instrument, kill, server_ids


def _store(engine: AsyncEngine, tables: LatticeTables) -> SessionStore:
    return SessionStore(
        engine, sessions_table=tables.sessions.name, messages_table=tables.messages.name
    )


# -- 8: per-loop engines are freed -------------------------------------------------------


@pytest.mark.only_backends("sqlite_file", "postgres")
def test_engines_of_finished_loops_are_freed(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    tag = uuid.uuid4().hex[:8]
    app_name = f"lattice-loops-{tag}"
    engine_kwargs: dict[str, Any] = {}
    if backend == "postgres":
        named = (
            {"application_name": app_name}
            if "psycopg" in url
            else {"server_settings": {"application_name": app_name}}
        )
        engine_kwargs = {"connect_args": named}
    session = SQLAlchemySession.from_url(
        f"loops-{tag}",
        url=url,
        create_tables=True,
        sessions_table=f"lp{tag}_sessions",
        messages_table=f"lp{tag}_messages",
        engine_kwargs=engine_kwargs,
    )
    threads_before = threading.active_count()
    for n in range(20):
        asyncio.run(session.add_items([{"n": n}]))
    assert len(asyncio.run(session.get_items())) == 20
    # Each loop's engine went with its loop: no threads (aiosqlite) or
    # server connections (PostgreSQL) left behind.
    assert threading.active_count() <= threads_before + 1
    if backend == "postgres":

        async def count() -> int:
            async with engine_for(POSTGRES_URL) as admin, admin.connect() as conn:
                return int(
                    (
                        await conn.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"
                            ),
                            {"n": app_name},
                        )
                    ).scalar_one()
                )

        assert asyncio.run(count()) == 0

    async def cleanup() -> None:
        async with session.engine.begin() as conn:
            await conn.run_sync(session.tables.metadata.drop_all)
        await dispose_engines()

    asyncio.run(cleanup())


# -- 10: metadata filters compare JSON values by type ---------------------------------------


async def test_metadata_filters_compare_json_values_by_type(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    store = _store(engine, tables)
    values: dict[str, Any] = {"t": True, "one": 1, "onef": 1.0, "f": False, "zero": 0, "s": "1"}
    for name, value in values.items():
        await store.set_metadata(name, {"archived": value})
    assert [i.session_id for i in await store.list_sessions(metadata={"archived": True})] == ["t"]
    assert {i.session_id for i in await store.list_sessions(metadata={"archived": 1})} == {"one"}
    assert await store.count(metadata={"archived": 0}) == 1
    result = await store.delete_sessions(metadata={"archived": True})
    assert result.sessions == 1
    assert await store.count() == len(values) - 1


# -- 11 and 7: imports are checked whole, and atomic per session -----------------------------

HEADER = '{"format": "lattice-sessions", "version": 1}\n'


def _session_line(sid: str, created: str = "2024-01-01T00:00:00+00:00") -> str:
    record = {
        "type": "session",
        "session_id": sid,
        "created_at": created,
        "updated_at": created,
        "metadata": None,
    }
    return json.dumps(record) + "\n"


def _item_line(item_text: str) -> str:
    record = {"type": "item", "created_at": "2024-01-01T00:00:00+00:00", "json": item_text}
    return json.dumps(record) + "\n"


def _export(sessions: dict[str, list[str]], created: str = "2024-01-01T00:00:00+00:00") -> str:
    lines = [HEADER]
    for sid, items in sessions.items():
        lines.append(_session_line(sid, created))
        lines.extend(_item_line(text) for text in items)
    total = sum(len(items) for items in sessions.values())
    lines.append(json.dumps({"type": "end", "sessions": len(sessions), "items": total}) + "\n")
    return "".join(lines)


@pytest.mark.parametrize("levels", [900, 100_000])
async def test_import_refuses_items_nested_too_deeply(
    engine: AsyncEngine, tables: LatticeTables, levels: int
) -> None:
    deep = "[" * levels + "]" * levels
    text_ = _export({"ok": ['{"a": 1}'], "deep": ['{"a": ' + deep + "}"]})
    store = _store(engine, tables)
    with pytest.raises(ValueError, match=r"line 5: .*nested"):
        await store.import_jsonl(io.StringIO(text_), on_conflict="skip")
    assert await store.count() == 0


async def test_import_refuses_timestamps_the_database_cannot_store(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    text_ = _export({"a": ['{"a": 1}']}) + ""
    bad = _export({"a": ['{"a": 1}'], "b": ['{"b": 1}']}).replace(
        '"2024-01-01T00:00:00+00:00", "updated_at"', '"0001-01-01T00:00:00+01:00", "updated_at"', 1
    )
    store = _store(engine, tables)
    with pytest.raises(ValueError, match=r"line 2: .*created_at"):
        await store.import_jsonl(io.StringIO(bad), on_conflict="skip")
    assert await store.count() == 0
    await store.import_jsonl(io.StringIO(text_), on_conflict="skip")
    assert await store.count() == 1


async def test_an_interrupted_import_leaves_no_half_session(
    engine: AsyncEngine, tables: LatticeTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lattice.store import transfer

    monkeypatch.setattr(transfer, "_BATCH_ITEMS", 10)
    items = [json.dumps({"i": i}) for i in range(35)]
    text_ = _export({"first": items[:5], "big": items})
    store = _store(engine, tables)
    calls = {"n": 0}
    original = transfer._Writer.write_batch

    async def dying_batch(self: Any, conn: Any, batch: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the second batch of "big"
            raise RuntimeError("killed")
        await original(self, conn, batch)

    monkeypatch.setattr(transfer._Writer, "write_batch", dying_batch)
    with pytest.raises(RuntimeError, match="killed"):
        await store.import_jsonl(io.StringIO(text_), on_conflict="skip")
    monkeypatch.setattr(transfer._Writer, "write_batch", original)
    assert await store.get_info("big") is None, "a half-imported session was left"
    first = await store.get_info("first")
    assert first is not None and first.item_count == 5
    again = await store.import_jsonl(io.StringIO(text_), on_conflict="skip")
    assert (again.created, again.skipped, again.items) == (1, 1, 35)
    assert len(await store.session("big").get_items()) == 35


# -- 13: the smaller ones ---------------------------------------------------------------------


async def test_absurd_limits_read_everything(engine: AsyncEngine, tables: LatticeTables) -> None:
    session = SQLAlchemySession(
        "limits",
        engine=engine,
        sessions_table=tables.sessions.name,
        messages_table=tables.messages.name,
    )
    await session.add_items([{"n": n} for n in range(3)])
    for limit in (2**31, 2**63 - 1, 2**63, 2**64, 10**30):
        assert await session.get_items(limit=limit) == [{"n": 0}, {"n": 1}, {"n": 2}]


def _cursor(payload: Any) -> str:
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor([1, "9999-12-31T23:59:59+00:00", "x"]),
        _cursor([1, "0001-01-01T00:00:00+05:00", "x"]),
        _cursor([1, "2024-01-01T00:00:00+00:00", "bad\x00id"]),
        _cursor([1, "2024-01-01T00:00:00+00:00", "x" * 300]),
        _cursor([1, "2024-01-01T00:00:00+00:00", 5]),
        _cursor([1, "2024-01-01T00:00:00", "x"]),
        "!!!",
    ],
)
async def test_tampered_cursors_are_a_value_error(
    engine: AsyncEngine, tables: LatticeTables, cursor: str
) -> None:
    store = _store(engine, tables)
    await store.set_metadata("x", {"k": 1})
    with pytest.raises(ValueError, match="cursor"):
        await store.list_sessions(cursor=cursor)


async def test_the_longest_table_names_work(engine: AsyncEngine) -> None:
    long_tables = lattice_tables("s" * 40 + uuid.uuid4().hex[:8], "m" * 40 + uuid.uuid4().hex[:8])
    async with engine.begin() as conn:
        await conn.run_sync(long_tables.metadata.create_all)
    try:
        session = SQLAlchemySession(
            "long",
            engine=engine,
            sessions_table=long_tables.sessions.name,
            messages_table=long_tables.messages.name,
        )
        await session.add_items([{"a": 1}])
        assert await session.pop_item() == {"a": 1}
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(long_tables.metadata.drop_all)


@pytest.mark.only_backends("postgres", "mysql")
async def test_the_store_recovers_after_its_connections_died(
    engine: AsyncEngine, tables: LatticeTables, server_backend: str
) -> None:
    instrument(engine)
    await engine.dispose()
    store = _store(engine, tables)
    await store.set_metadata("r", {"k": 1})
    from tests.conftest import SERVER_URLS

    async with engine_for(SERVER_URLS[server_backend], isolation_level="AUTOCOMMIT") as admin:
        for server_id in server_ids(engine):
            await kill(admin, server_id)
    assert (await store.get_info("r")) is not None
    await store.set_metadata("r", {"k": 2})
    assert await store.count() == 1


async def test_copy_on_one_engine_with_a_pool_of_one(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite_memory":
        url = "sqlite+aiosqlite:///:memory:"
        options: dict[str, Any] = {}
    else:
        url = backend_url(backend, tmp_path)
        options = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 5}
    async with engine_for(url, **options) as eng:
        async with temporary_tables(eng, "ca") as a, temporary_tables(eng, "cb") as b:
            source, target = _store(eng, a), _store(eng, b)
            await source.session("one").add_items([{"i": i} for i in range(3)])
            result = await asyncio.wait_for(source.copy_to(target, on_conflict="skip"), 30)
            assert (result.created, result.items) == (1, 3)
            assert await target.session("one").get_items() == [{"i": i} for i in range(3)]
            count = select(func.count()).select_from(b.messages)
            async with eng.connect() as conn:
                assert (await conn.execute(count)).scalar_one() == 3
