"""Core behaviour beyond the conformance suite: protocol, settings, engines, SQLite."""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import agents
import pytest
from agents.memory import SessionSettings as SDKSessionSettings
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

import lattice
from lattice import (
    Session,
    SessionABC,
    SessionSettings,
    SessionStore,
    SQLAlchemySession,
    SQLiteSession,
    dispose_engines,
)
from lattice.engines import make_engine, shared_engine
from lattice.schema import LatticeTables

from .conftest import backend_url


def _session(engine: AsyncEngine, tables: LatticeTables, sid: str, **kw: Any) -> SQLAlchemySession:
    return SQLAlchemySession(
        sid,
        engine=engine,
        sessions_table=tables.sessions.name,
        messages_table=tables.messages.name,
        **kw,
    )


# -- the protocol and settings ---------------------------------------------------


async def test_every_backend_is_an_agents_sdk_session(
    engine: AsyncEngine, tables: LatticeTables, tmp_path: Path
) -> None:
    sessions: list[Any] = [
        _session(engine, tables, "a"),
        SQLiteSession("b"),
        SQLiteSession("c", tmp_path / "x.db"),
    ]
    for session in sessions:
        assert isinstance(session, agents.memory.Session)
        assert isinstance(session, Session)
        assert isinstance(session, SessionABC)


def test_session_abc_defaults() -> None:
    """As in the SDK: the ABC's attribute is None, a made session has ``SessionSettings()``."""
    assert SessionABC.session_settings is None
    assert SQLiteSession("x").session_settings == SessionSettings()
    assert SQLiteSession("x", session_settings=None).session_settings == SessionSettings()


def test_settings_resolve_accepts_ours_the_sdks_and_dicts() -> None:
    base = SessionSettings(limit=10)
    assert base.resolve(None) is base
    assert base.resolve(SessionSettings(limit=3)).limit == 3
    assert base.resolve(SessionSettings()).limit == 10
    assert base.resolve(SDKSessionSettings(limit=4)).limit == 4
    assert base.resolve(SDKSessionSettings()).limit == 10
    assert base.resolve({"limit": 5}).limit == 5
    assert base.resolve({"limit": None}).limit == 10
    assert base.to_dict() == {"limit": 10}
    with pytest.raises(TypeError, match=r"(?i)unknown session setting"):
        base.resolve({"limt": 5})
    with pytest.raises(TypeError, match="SessionSettings"):
        base.resolve(42)
    # lattice.SessionSettings is the SDK's pydantic class, which rejects what it
    # cannot read as an int; the sessions refuse even a numeric string (below).
    with pytest.raises(ValueError, match="limit"):
        SessionSettings(limit="five")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limit must be an int"):
        SQLiteSession("x", session_settings={"limit": "5"})


async def test_sessions_accept_the_sdks_settings(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = _session(engine, tables, "sdk-settings", session_settings=SDKSessionSettings(limit=1))
    assert isinstance(session.session_settings, SessionSettings)
    await session.add_items([{"n": 1}, {"n": 2}])
    assert await session.get_items() == [{"n": 2}]


def test_constructor_errors() -> None:
    engine = make_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(TypeError, match="AsyncEngine"):
        SQLAlchemySession("x", engine="sqlite://")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="session_id must be a str"):
        SQLAlchemySession(42, engine=engine)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        SQLAlchemySession("a\x00b", engine=engine)
    with pytest.raises(ValueError, match="lone surrogate"):
        SQLAlchemySession("a\ud800", engine=engine)
    with pytest.raises(ValueError, match="sessions_table"):
        SQLAlchemySession("x", engine=engine, sessions_table="bad name; --")
    with pytest.raises(ValueError, match="max_item_bytes"):
        SQLAlchemySession("x", engine=engine, max_item_bytes=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        SQLAlchemySession.from_url("x", url="sqlite+aiosqlite:///x.db", bogus=1)
    with pytest.raises(ValueError, match="not a database URL"):
        SQLAlchemySession.from_url("x", url="not a url")


async def test_max_item_bytes_is_configurable(engine: AsyncEngine, tables: LatticeTables) -> None:
    session = _session(engine, tables, "small", max_item_bytes=100)
    await session.add_items([{"c": "x" * 80}])
    with pytest.raises(ValueError, match=r"item 1 is \d+ bytes.*limit of 100"):
        await session.add_items([{"c": "ok"}, {"c": "é" * 60}])
    assert await session.get_items() == [{"c": "x" * 80}]


async def test_payload_is_stored_as_plain_utf8_json(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = _session(engine, tables, "raw")
    await session.add_items([{"text": "héllo 🧠", "n": 1.0}])
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                tables.messages.select().with_only_columns(tables.messages.c.message_data)
            )
        ).scalar_one()
    assert stored == '{"text":"héllo 🧠","n":1.0}'


async def test_item_count_and_timestamps_follow_writes(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = _session(engine, tables, "counted")
    s = tables.sessions

    async def row() -> Any:
        async with engine.connect() as conn:
            return (await conn.execute(s.select().where(s.c.session_id == "counted"))).one()

    await session.add_items([{"n": n} for n in range(3)])
    first = await row()
    assert first.item_count == 3
    assert first.created_at.tzinfo is not None and first.created_at.microsecond is not None
    await session.pop_item()
    await session.add_items([{"n": 9}])
    assert (await row()).item_count == 3
    await session.clear_session()
    after = await row()
    assert after.item_count == 0
    assert after.updated_at >= first.updated_at
    assert after.created_at == first.created_at


# -- engines ---------------------------------------------------------------------


async def test_from_url_shares_one_engine_and_pool(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite_memory":
        a = SQLAlchemySession.from_url("a", url="sqlite+aiosqlite:///:memory:", create_tables=True)
        b = SQLAlchemySession.from_url("a", url="sqlite+aiosqlite:///:memory:", create_tables=True)
        assert a.engine is not b.engine, "in-memory databases are private to their session"
        await a.add_items([{"n": 1}])
        assert await b.get_items() == []
        await a.engine.dispose()
        await b.engine.dispose()
        return
    url = backend_url(backend, tmp_path)
    tag = uuid.uuid4().hex[:8]
    app_name = f"lattice-share-{tag}"
    engine_kwargs: dict[str, Any] = {}
    if backend == "postgres":
        # How the application name is given depends on the driver under test.
        named = (
            {"application_name": app_name}
            if "psycopg" in url
            else {"server_settings": {"application_name": app_name}}
        )
        engine_kwargs = {"connect_args": named}
    kw = {
        "sessions_table": f"sh{tag}_sessions",
        "messages_table": f"sh{tag}_messages",
        "engine_kwargs": engine_kwargs,
    }
    sessions = [
        SQLAlchemySession.from_url(f"user-{i}", url=url, create_tables=True, **kw)  # type: ignore[arg-type]
        for i in range(1000)
    ]
    engine = sessions[0].engine
    assert all(s.engine is engine for s in sessions)
    try:
        await asyncio.gather(*(s.add_items([{"i": i}]) for i, s in enumerate(sessions)))
        results = await asyncio.gather(*(s.get_items() for s in sessions))
        assert results == [[{"i": i}] for i in range(1000)]
        limit = engine.sync_engine.pool.size() + engine.sync_engine.pool._max_overflow  # type: ignore[attr-defined]
        if backend == "postgres":
            admin = make_engine(url)
            async with admin.connect() as conn:
                count = (
                    await conn.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                        {"n": app_name},
                    )
                ).scalar_one()
            await admin.dispose()
            assert 0 < count <= limit
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(sessions[0].tables.metadata.drop_all)
        await dispose_engines()
    assert sessions[0].engine is not engine, "dispose_engines forgets the shared engine"


async def test_an_engine_passed_in_is_never_disposed(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    pool = engine.sync_engine.pool
    session = _session(engine, tables, "owned")
    await session.add_items([{"n": 1}])
    await dispose_engines()
    del session
    assert engine.sync_engine.pool is pool
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1


async def test_create_tables_runs_once_per_engine(backend: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    kw = {"sessions_table": f"ct{tag}_sessions", "messages_table": f"ct{tag}_messages"}
    engine = make_engine(backend_url(backend, tmp_path))
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.strip().upper())

    try:
        sessions = [
            SQLAlchemySession(f"s{i}", engine=engine, create_tables=True, **kw) for i in range(30)
        ]
        await asyncio.gather(*(s.add_items([{"i": i}]) for i, s in enumerate(sessions)))
        creates = [s for s in statements if s.startswith("CREATE TABLE")]
        assert len(creates) == len(sessions[0].tables.metadata.tables), creates
        statements.clear()
        await SQLAlchemySession("later", engine=engine, create_tables=True, **kw).add_items(
            [{"x": 1}]
        )
        baseline = list(statements)
        statements.clear()
        await SQLAlchemySession("plain", engine=engine, **kw).add_items([{"x": 1}])
        assert len(baseline) == len(statements), "create_tables costs nothing after the first time"
        assert [len(await s.get_items()) for s in sessions] == [1] * 30
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(sessions[0].tables.metadata.drop_all)
        await engine.dispose()


def test_from_url_sessions_work_across_event_loops(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite_memory":
        session = SQLiteSession("loops")
    else:
        session = SQLAlchemySession.from_url(
            f"loops-{uuid.uuid4().hex}", url=backend_url(backend, tmp_path), create_tables=True
        )
    asyncio.run(session.add_items([{"turn": 1}]))
    asyncio.run(session.add_items([{"turn": 2}]))

    async def read_and_close() -> list[dict[str, Any]]:
        try:
            return await session.get_items()
        finally:
            await session.clear_session()
            await dispose_engines()

    assert asyncio.run(read_and_close()) == [{"turn": 1}, {"turn": 2}]


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql+asyncpg://u@127.0.0.1/db", "asyncpg", "postgres"),
        ("mysql+aiomysql://u@127.0.0.1/db", "aiomysql", "mysql"),
    ],
)
def test_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == module or name.startswith(module + "."):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real_import(name, *args, **kwargs)

    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=rf"pip install 'lattice-sessions\[{extra}\]'"):
        SQLAlchemySession.from_url("x", url=url)


def test_plain_urls_map_to_the_async_drivers(tmp_path: Path) -> None:
    for plain, driver in [
        (f"sqlite:///{tmp_path / 'p.db'}", "sqlite+aiosqlite"),
        ("postgresql://root@127.0.0.1/test", "postgresql+asyncpg"),
        ("mysql://root@127.0.0.1/test", "mysql+aiomysql"),
    ]:
        assert shared_engine(plain).url.drivername == driver
    asyncio.run(dispose_engines())


# -- SQLite ------------------------------------------------------------------------


async def test_sqlite_memory_is_private_to_its_object() -> None:
    first, second = SQLiteSession("same-id"), SQLiteSession("same-id")
    await first.add_items([{"n": 1}])
    assert await first.get_items() == [{"n": 1}]
    assert await second.get_items() == []


async def test_sqlite_file_is_shared_and_runs_in_wal(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    writer, reader = SQLiteSession("u", path), SQLiteSession("u", str(path))
    assert writer.engine is reader.engine
    await writer.add_items([{"n": 1}])
    assert await reader.get_items() == [{"n": 1}]
    async with writer.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 5000
    await dispose_engines()
    # Another process (here: the plain sqlite3 module) sees the data too.
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM agent_messages").fetchone() == (1,)


def test_public_names() -> None:
    for name in [
        "Session",
        "SessionABC",
        "SessionSettings",
        "SQLAlchemySession",
        "SQLiteSession",
        "dispose_engines",
    ]:
        assert name in lattice.__all__
        assert getattr(lattice, name) is not None


@pytest.mark.parametrize("make", ["session", "store"])
def test_an_engine_that_is_not_an_async_engine_is_refused_by_name(make: str) -> None:
    """A URL string or a sync engine where the AsyncEngine goes: a TypeError saying what to do."""
    from sqlalchemy import create_engine

    for wrong, kind in (("sqlite+aiosqlite://", "str"), (create_engine("sqlite://"), "Engine")):
        with pytest.raises(TypeError, match=rf"not {kind}; use \w+\.from_url"):
            if make == "session":
                SQLAlchemySession("s", engine=wrong)
            else:
                SessionStore(wrong)
