"""Migrations: no drift from ``create_tables``, up and down again, the SDK baseline.

Every test runs on a brand-new database (``fresh_url``) on SQLite, PostgreSQL
and MySQL, and compares against ``lattice.schema.metadata`` with Alembic's own
autogenerate comparison, so a revision added later is held to the same test.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from lattice import AdvancedSQLAlchemySession, SQLAlchemySession, migrations, schema
from lattice._migration_env import include_name
from lattice.engines import make_engine
from lattice.schema_advanced import advanced_table_names


async def schema_diff(url: str, metadata: MetaData = schema.metadata) -> list[Any]:
    """What Alembic's autogenerate finds between the database and ``metadata``."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: compare_metadata(
                    MigrationContext.configure(
                        sync_conn, opts={"include_name": include_name, "compare_type": True}
                    ),
                    metadata,
                )
            )
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def head() -> str:
    return next(r.revision for r in await migrations.history() if r.is_head)


async def test_upgrade_matches_schema_then_down_and_up_again(fresh_url: str) -> None:
    await migrations.upgrade(fresh_url)
    assert await schema_diff(fresh_url) == []
    assert await migrations.current(fresh_url) == await head()

    await migrations.downgrade(fresh_url, "base")
    assert await migrations.current(fresh_url) is None
    assert await table_names(fresh_url) == {migrations.VERSION_TABLE}

    await migrations.upgrade(fresh_url)
    assert await schema_diff(fresh_url) == []
    assert await migrations.check(fresh_url) == await head()


async def test_create_tables_schema_is_the_head(fresh_url: str) -> None:
    engine = make_engine(fresh_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
    finally:
        await engine.dispose()
    assert await schema_diff(fresh_url) == []
    # upgrade recognises tables made by create_tables=True as the head.
    await migrations.upgrade(fresh_url)
    assert await migrations.current(fresh_url) == await head()
    assert await schema_diff(fresh_url) == []


async def test_comparison_sees_an_older_schema(fresh_url: str) -> None:
    """The drift check can fail: the baseline differs from the current schema."""
    await migrations.upgrade(fresh_url, "0001")
    diff = await schema_diff(fresh_url)
    added = [d[3].name for d in diff if isinstance(d, tuple) and d[0] == "add_column"]
    assert "item_count" in added, diff


async def test_baseline_is_the_agents_sdk_schema(fresh_url: str, backend: str) -> None:
    """Revision 0001 makes what the SDK's SQLAlchemySession(create_tables=True) makes."""
    from agents.extensions.memory import SQLAlchemySession as SDKSession

    await migrations.upgrade(fresh_url, "0001")
    engine = make_engine(fresh_url)
    try:
        sdk_metadata = SDKSession("x", engine=engine)._metadata
        if backend == "mysql":  # the SDK cannot create its tables there: VARCHAR needs a length
            for table in sdk_metadata.tables.values():
                table.c.session_id.type.length = 255  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
    assert await schema_diff(fresh_url, sdk_metadata) == []


async def test_downgraded_baseline_holds_the_data(fresh_url: str) -> None:
    """Down to the baseline and back keeps every row, in order, with its count."""
    from lattice import SQLAlchemySession

    await migrations.upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        session = SQLAlchemySession("s1", engine=engine)
        items = [{"role": "user", "content": f"m{i} ✓"} for i in range(5)]
        await session.add_items(items)
        await migrations.downgrade(engine, "0001")
        await migrations.upgrade(engine)
        assert await session.get_items() == items
        async with engine.connect() as conn:
            count = await conn.execute(text("SELECT item_count FROM agent_sessions"))
            assert count.scalar_one() == 5
    finally:
        await engine.dispose()


async def test_offline_sql_builds_the_same_schema(fresh_url: str) -> None:
    """The --sql script, run statement by statement, makes the head schema."""
    script = await migrations.upgrade_sql(fresh_url)
    statements = []
    for chunk in script.split(";\n"):
        sql = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
        if sql and sql not in ("BEGIN", "COMMIT"):
            statements.append(sql)
    engine = make_engine(fresh_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for sql in statements:
                await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()
    assert await schema_diff(fresh_url) == []
    assert await migrations.check(fresh_url) == await head()


async def test_create_tables_before_the_advanced_tables_is_upgraded(fresh_url: str) -> None:
    """Tables made by ``create_tables=True`` before revision 0005 are stamped 0004, then
    upgraded: the advanced sessions' tables are added and the data stays."""
    names = advanced_table_names(schema.DEFAULT_SESSIONS_TABLE, schema.DEFAULT_MESSAGES_TABLE)
    advanced = set(names)
    older = [t for name, t in schema.metadata.tables.items() if name not in advanced]
    engine = make_engine(fresh_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: schema.metadata.create_all(c, tables=older))
        session = SQLAlchemySession("kept", engine=engine)
        await session.add_items([{"role": "user", "content": "hi"}])
    finally:
        await engine.dispose()
    assert advanced <= {change[1].name for change in await schema_diff(fresh_url)}
    await migrations.upgrade(fresh_url)
    assert await schema_diff(fresh_url) == []
    assert await migrations.current(fresh_url) == await head()
    assert advanced <= await table_names(fresh_url)
    engine = make_engine(fresh_url)
    try:
        session = AdvancedSQLAlchemySession("kept", engine=engine)
        assert await session.get_items() == [{"role": "user", "content": "hi"}]
        assert [b["branch_id"] for b in await session.list_branches()] == []
        await session.add_items([{"role": "user", "content": "again"}])
        assert [t["turn"] for t in await session.get_conversation_turns()] == [1, 2]
    finally:
        await engine.dispose()
