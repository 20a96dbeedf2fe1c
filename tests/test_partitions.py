"""``agent_messages`` hash-partitioned by session on PostgreSQL (``--partitions N``).

One throwaway database is upgraded with ``partitions=4`` for the module
(``partitioned_url``); the tests that change the layout itself make their own
(``fresh_url``). What is proven here:

* the layout: ``PARTITION BY HASH (session_id)``, N partitions, primary key
  ``(session_id, id)``, one id sequence shared by every partition; the
  autogenerate comparison finds no difference; ``check``/``current`` work;
* the refusals: bad counts, other databases, another revision than the
  head, a table that holds items or has another number of partitions;
* every statement a session runs on messages, and the store's (retention,
  export, copy), reads one partition only, in custom and in generic plans
  (EXPLAIN; a generic plan is what a prepared statement may switch to);
* the whole Lattice conformance suite, retention, export/import and copy
  on the partitioned table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from lattice import SessionStore, SQLAlchemySession, _migration_env, migrations, schema
from lattice._partitioning import MAX_PARTITIONS
from lattice.cli import app
from lattice.drivers import driver_for
from lattice.drivers.base import Stmt
from lattice.drivers.compiled import compiled_statements
from lattice.engines import engine_state, make_engine
from lattice.testing import LatticeConformance, SessionFactory
from tests.conftest import POSTGRES_URL, _check_server, temporary_tables
from tests.test_migrations import schema_diff

pytestmark = pytest.mark.postgres

PARTITIONS = 4
MESSAGES = schema.DEFAULT_MESSAGES_TABLE


async def _create_database(name: str) -> str:
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await admin.dispose()
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def _drop_database(name: str) -> None:
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        await admin.dispose()


# Parametrized with the backend's name only so that test ids say "postgres"
# (the suite's summary counts the tests of each backend by their ids).
_ON_POSTGRES = [pytest.param("postgres", id="postgres")]


@pytest.fixture(scope="module", params=_ON_POSTGRES)
def partitioned_url() -> Iterator[str]:
    """A database of its own, upgraded with ``partitions=4``, dropped at the end."""
    _check_server("postgres")
    name = f"lattice_part_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(_create_database(name))
    try:
        asyncio.run(migrations.upgrade(url, partitions=PARTITIONS))
        yield url
    finally:
        asyncio.run(_drop_database(name))


@pytest.fixture(params=_ON_POSTGRES)
def pg_fresh_url() -> Iterator[str]:
    """A brand-new empty database for one test."""
    _check_server("postgres")
    name = f"lattice_part_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(_create_database(name))
    try:
        yield url
    finally:
        asyncio.run(_drop_database(name))


@pytest.fixture
async def part_engine(partitioned_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(partitioned_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _scalar(url: str, sql: str, **params: Any) -> Any:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()
    finally:
        await engine.dispose()


async def _layout(url: str) -> tuple[str | None, int, list[str]]:
    """(partition strategy, number of partitions, primary key columns) of the messages table."""
    strategy = await _scalar(
        url,
        "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)",
        t=MESSAGES,
    )
    count = await _scalar(
        url, "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass(:t)", t=MESSAGES
    )
    key = await _scalar(
        url,
        "SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM pg_constraint c, "
        "unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) JOIN pg_attribute a "
        "ON a.attrelid = to_regclass(:t) AND a.attnum = k.attnum "
        "WHERE c.conrelid = to_regclass(:t) AND c.contype = 'p'",
        t=MESSAGES,
    )
    return strategy, int(count), str(key).split(",")


# --- the layout and the migration option ---------------------------------------------


async def test_fresh_database_gets_the_partitioned_layout(partitioned_url: str) -> None:
    assert await _layout(partitioned_url) == ("h", PARTITIONS, ["session_id", "id"])
    # The metadata the migration environment compares this database with
    # (autogenerate, adoption) is the partitioned one, and it matches.
    engine = make_engine(partitioned_url)
    try:
        async with engine.connect() as conn:
            chosen = await conn.run_sync(_migration_env.target_metadata)
    finally:
        await engine.dispose()
    assert chosen is schema.partitioned_metadata
    assert await schema_diff(partitioned_url, chosen) == []
    assert await schema_diff(partitioned_url) != []  # the plain layout's index is not there
    head = next(r.revision for r in await migrations.history() if r.is_head)
    assert await migrations.current(partitioned_url) == head
    assert await migrations.check(partitioned_url) == head
    # Upgrading again, with or without the option, changes nothing.
    await migrations.upgrade(partitioned_url, partitions=PARTITIONS)
    await migrations.upgrade(partitioned_url)
    assert await _layout(partitioned_url) == ("h", PARTITIONS, ["session_id", "id"])


def test_cli_check_current_and_upgrade_on_a_partitioned_database(partitioned_url: str) -> None:
    head = asyncio.run(migrations.history())[0].revision
    runner = CliRunner()
    for command in (["check"], ["current"], ["upgrade", "--partitions", str(PARTITIONS)]):
        result = runner.invoke(app, ["db", *command, "--url", partitioned_url])
        assert result.exit_code == 0, result.output
        assert head in result.output
    result = runner.invoke(app, ["db", "upgrade", "--partitions", "2", "--url", partitioned_url])
    assert result.exit_code == 1
    assert "already partitioned into 4 partitions, not 2" in result.output


async def test_ids_come_from_one_sequence_across_partitions(part_engine: AsyncEngine) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [f"seq-{tag}-{n}" for n in range(12)]
    for sid in ids:
        await SQLAlchemySession(sid, engine=part_engine).add_items([{"n": sid}])
    async with part_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    f"SELECT session_id, id, tableoid::regclass::text FROM {MESSAGES} "
                    "WHERE session_id LIKE :p ORDER BY id"
                ),
                {"p": f"seq-{tag}-%"},
            )
        ).all()
    assert [r[0] for r in rows] == ids  # ids grow in the order of the writes
    assert len({r[2] for r in rows}) > 1  # and the sessions landed in several partitions


@pytest.mark.parametrize("bad", [0, -3, MAX_PARTITIONS + 1, True, 2.0, "4"])
async def test_a_count_that_is_not_sane_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="partitions must be"):
        await migrations.upgrade("postgresql://nobody@127.0.0.1:1/none", partitions=bad)


@pytest.mark.parametrize(
    "url",
    ["sqlite+aiosqlite:///never.db", "mysql+aiomysql://root@127.0.0.1:3306/test"],
    ids=["SQLite", "MySQL"],  # not "mysql": the summary would count it as a MySQL run
)
async def test_other_databases_are_refused_before_connecting(url: str) -> None:
    with pytest.raises(ValueError, match=r"PostgreSQL feature.*upgrade without --partitions"):
        await migrations.upgrade(url, partitions=4)


async def test_only_the_head_can_be_partitioned(pg_fresh_url: str) -> None:
    with pytest.raises(ValueError, match="upgrade to head"):
        await migrations.upgrade(pg_fresh_url, "0003", partitions=4)
    assert await migrations.current(pg_fresh_url) is None


async def test_a_table_with_items_is_refused_and_left_as_it_was(pg_fresh_url: str) -> None:
    await migrations.upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url)
    try:
        await SQLAlchemySession("kept", engine=engine).add_items([{"a": 1}])
    finally:
        await engine.dispose()
    with pytest.raises(
        migrations.MigrationError, match=r"already holds items.*nothing was changed"
    ):
        await migrations.upgrade(pg_fresh_url, partitions=4)
    strategy, count, key = await _layout(pg_fresh_url)
    assert (strategy, count, key) == (None, 0, ["id"])
    assert await _scalar(pg_fresh_url, f"SELECT count(*) FROM {MESSAGES}") == 1


async def test_an_empty_table_is_partitioned_and_its_ids_keep_growing(pg_fresh_url: str) -> None:
    await migrations.upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url)
    try:
        session = SQLAlchemySession("s", engine=engine)
        await session.add_items([{"a": 1}, {"a": 2}])
        await session.clear_session()
        before = await _scalar(pg_fresh_url, f"SELECT last_value FROM {MESSAGES}_id_seq")
        await migrations.upgrade(pg_fresh_url, partitions=3)
        assert await _layout(pg_fresh_url) == ("h", 3, ["session_id", "id"])
        await session.add_items([{"a": 3}])
        new_id = await _scalar(pg_fresh_url, f"SELECT id FROM {MESSAGES}")
        assert new_id > before
        assert await session.get_items() == [{"a": 3}]
    finally:
        await engine.dispose()
    with pytest.raises(migrations.MigrationError, match="already partitioned into 3 partitions"):
        await migrations.upgrade(pg_fresh_url, partitions=5)


async def test_a_table_partitioned_otherwise_is_refused_and_still_upgrades(
    pg_fresh_url: str,
) -> None:
    await migrations.upgrade(pg_fresh_url)
    engine = make_engine(pg_fresh_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE {MESSAGES} RENAME TO by_hand"))
            await conn.execute(
                text(
                    f"CREATE TABLE {MESSAGES} (LIKE by_hand INCLUDING DEFAULTS "
                    "INCLUDING INDEXES) PARTITION BY RANGE (id)"
                )
            )
    finally:
        await engine.dispose()
    with pytest.raises(migrations.MigrationError, match="not by hash"):
        await migrations.upgrade(pg_fresh_url, partitions=4)
    await migrations.upgrade(pg_fresh_url)  # the application's own layout is its business


async def test_downgrade_to_base_and_up_again(pg_fresh_url: str) -> None:
    await migrations.upgrade(pg_fresh_url, partitions=2)
    await migrations.downgrade(pg_fresh_url, "base")
    assert await _scalar(pg_fresh_url, "SELECT to_regclass(:t)::text", t=MESSAGES) is None
    await migrations.upgrade(pg_fresh_url)
    assert (await _layout(pg_fresh_url))[:2] == (None, 0)
    assert await schema_diff(pg_fresh_url) == []


def test_cli_usage_errors_exit_2(tmp_path: Any) -> None:
    runner = CliRunner()
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    cases = [
        (["--partitions", "4", "--url", sqlite], "PostgreSQL feature"),
        (["--partitions", "0", "--url", POSTGRES_URL], "between 1 and"),
        (["--partitions", "4", "--sql", "--url", POSTGRES_URL], "not with --sql"),
        (["0003", "--partitions", "4", "--url", POSTGRES_URL], "upgrade to head"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["db", "upgrade", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
    assert not (tmp_path / "x.db").exists()


# --- every hot query reads one partition (EXPLAIN) -----------------------------------


def _scanned(plan: dict[str, Any]) -> set[str]:
    """The relations a plan scans (not the targets a ModifyTable lists)."""
    found = set()
    if "Scan" in plan.get("Node Type", "") and "Relation Name" in plan:
        found.add(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found |= _scanned(child)
    return found


async def _plans(engine: AsyncEngine, sql: str, args: tuple[Any, ...]) -> dict[str, set[str]]:
    """The partitions ``sql`` scans in a custom and in a generic plan (nothing runs)."""
    out = {}
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        async with raw.transaction():
            # EXPLAIN EXECUTE takes no bound parameters: the server quotes
            # each value as a literal of the statement's parameter type.
            literals = []
            for value, param in zip(args, (await raw.prepare(sql)).get_parameters(), strict=True):
                typ = await raw.fetchval("SELECT format_type($1::oid, NULL)", param.oid)
                quoted = await raw.fetchval(f"SELECT quote_nullable($1::{typ})", value)
                literals.append(f"{quoted}::{typ}")
            await raw.execute(f"PREPARE lattice_probe AS {sql}")
            call = (
                f"EXECUTE lattice_probe({', '.join(literals)})" if args else "EXECUTE lattice_probe"
            )
            for mode in ("force_custom_plan", "force_generic_plan"):
                await raw.execute(f"SET LOCAL plan_cache_mode = {mode}")
                plan = await raw.fetchval(f"EXPLAIN (FORMAT JSON) {call}")
                out[mode] = _scanned(_json(plan)[0]["Plan"])
            await raw.execute("DEALLOCATE lattice_probe")
    return out


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _partition_of(engine: AsyncEngine, session_id: str) -> str:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(f"SELECT tableoid::regclass::text FROM {MESSAGES} WHERE session_id = :s LIMIT 1"),
            {"s": session_id},
        )
        return str(found.scalar_one())


def _asyncpg_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


# The statements that read or delete a session's messages; each must scan
# exactly the session's partition. The inserts scan none.
_READS_ONE = {
    Stmt.SELECT_ALL,
    Stmt.SELECT_LATEST,
    Stmt.SELECT_NEWEST,
    Stmt.DELETE_NEWEST_RETURNING,
    Stmt.DELETE_BY_ID,
    Stmt.DELETE_ALL,
    Stmt.POP,
}
_SCANS_NONE = {Stmt.INSERT_MESSAGE, Stmt.INSERT_MESSAGE_WITH_ID, Stmt.APPEND}


async def test_every_session_statement_reads_one_partition(partitioned_url: str) -> None:
    # asyncpg: its hand-written one-statement append and pop, and the
    # statements every driver shares (compiled for asyncpg: the plans do not
    # depend on the driver).
    engine = make_engine(_asyncpg_url(partitioned_url))
    try:
        sid = f"explain-{uuid.uuid4().hex[:8]}"
        session = SQLAlchemySession(sid, engine=engine)
        await session.add_items([{"n": n} for n in range(5)])
        own = await _partition_of(engine, sid)
        tables = schema.lattice_tables()
        compiled = compiled_statements(
            tables, engine.dialect, driver_for(engine, engine_state(engine))
        )
        params = {
            "sid": sid,
            "now": schema.utc_now(),
            "token": "t" * schema.WRITE_TOKEN_LENGTH,
            "n": 1,
            "lim": 3,
            "mid": 1,
            "data": "{}",
            "texts": ["{}"],
        }
        checked = set()
        for stmt, statement in compiled.items():
            if MESSAGES not in statement.sql:
                continue
            plans = await _plans(engine, statement.sql, statement.args(params))
            for mode, scanned in plans.items():
                partitions = {r for r in scanned if r.startswith(f"{MESSAGES}_p")}
                assert MESSAGES not in scanned, (stmt, mode, scanned)
                if stmt in _READS_ONE:
                    assert partitions == {own}, (stmt, mode, scanned)
                else:
                    assert stmt in _SCANS_NONE and not partitions, (stmt, mode, scanned)
            checked.add(stmt)
        assert checked == _READS_ONE | _SCANS_NONE

        # Everything a session's calls actually send is one of those statements.
        sent: list[str] = []

        async def trace(when: str, sql: str | None, info: Any) -> None:
            if when == "before_cursor_execute" and sql and MESSAGES in sql:
                sent.append(sql)

        engine_state(engine).trace = trace
        await session.add_items([{"more": 1}])
        await session.get_items(limit=2)
        await session.get_items()
        await session.pop_item()
        await session.clear_session()
        engine_state(engine).trace = None
        known = {c.sql for c in compiled.values()}
        assert sent and set(sent) <= known, set(sent) - known
    finally:
        await engine.dispose()


async def test_store_queries_read_one_partition(partitioned_url: str) -> None:
    """Retention (a session deleted in batches), export and the in-database copy."""
    engine = make_engine(_asyncpg_url(partitioned_url))
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if MESSAGES in statement and statement.lstrip().upper().startswith(("SELECT", "DELETE")):
            captured.append((statement, parameters))

    try:
        store = SessionStore(engine)
        sid = f"store-{uuid.uuid4().hex[:8]}"
        await store.session(sid).add_items([{"n": n} for n in range(7)])
        own = await _partition_of(engine, sid)
        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        await store.export_jsonl(io.StringIO(), prefix=sid)
        async with temporary_tables(engine, "pc") as other:
            plain = SessionStore(
                engine, sessions_table=other.sessions.name, messages_table=other.messages.name
            )
            await plain.session(sid).add_items([{"copy": 1}])
            await plain.copy_to(store, on_conflict="append", prefix=sid)
        await store.delete_session(sid, batch_items=3)
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
        assert len(captured) >= 4, captured
        for statement, parameters in captured:
            if f" {MESSAGES} " not in statement + " " and f"{MESSAGES}." not in statement:
                continue  # the temporary tables' statements
            for mode, scanned in (await _plans(engine, statement, tuple(parameters))).items():
                partitions = {r for r in scanned if r.startswith(f"{MESSAGES}_p")}
                assert partitions == {own} and MESSAGES not in scanned, (statement, mode, scanned)
    finally:
        await engine.dispose()


# --- sessions, retention and transfers on the partitioned table ----------------------


class TestPartitionedConformance(LatticeConformance):
    """The whole Lattice conformance suite on the partitioned table."""

    @pytest.fixture
    def session_factory(self, part_engine: AsyncEngine) -> SessionFactory:
        def make(session_id: str, session_settings: Any = None) -> SQLAlchemySession:
            return SQLAlchemySession(
                session_id, engine=part_engine, session_settings=session_settings
            )

        return make


async def test_retention_export_import_and_copy(part_engine: AsyncEngine, tmp_path: Any) -> None:
    store = SessionStore(part_engine)
    tag = uuid.uuid4().hex[:8]
    prefix = f"ret-{tag}-"
    old, new = f"{prefix}old", f"{prefix}new"
    await store.session(old).add_items([{"n": n} for n in range(5)])
    await store.session(new).add_items([{"n": n} for n in range(3)])
    async with part_engine.begin() as conn:
        await conn.execute(
            text("UPDATE agent_sessions SET updated_at = :t WHERE session_id = :s"),
            {"t": schema.utc_now() - dt.timedelta(days=40), "s": old},
        )
    path = tmp_path / "part.jsonl"
    exported = await store.export_jsonl(path, prefix=prefix)
    assert (exported.sessions, exported.items) == (2, 8)

    purged = await store.purge(dt.timedelta(days=30), batch_items=2)
    assert (purged.sessions, purged.items) == (1, 5)
    assert await store.get_info(old) is None
    assert await store.session(new).get_items() == [{"n": n} for n in range(3)]

    imported = await store.import_jsonl(path, on_conflict="skip")
    assert (imported.created, imported.skipped) == (1, 1)
    assert await store.session(old).get_items() == [{"n": n} for n in range(5)]

    # Copy into a plain (unpartitioned) pair of tables and back: the way to
    # move an existing database's sessions onto the partitioned layout.
    async with temporary_tables(part_engine, "pt") as plain_tables:
        plain = SessionStore(
            part_engine,
            sessions_table=plain_tables.sessions.name,
            messages_table=plain_tables.messages.name,
        )
        await store.copy_to(plain, on_conflict="skip", prefix=prefix)
        await store.delete_sessions(prefix=prefix)
        await plain.copy_to(store, on_conflict="skip")
    assert await store.session(old).get_items() == [{"n": n} for n in range(5)]
    assert (await store.get_info(new)).item_count == 3  # type: ignore[union-attr]


def test_benchmark_smoke(partitioned_url: str) -> None:
    """benchmarks/partitions_bench.py runs end to end at a tiny size (no timing asserted)."""
    from benchmarks.partitions_bench import measure, report

    results = asyncio.run(measure(POSTGRES_URL, (0, 2), sessions=2, items=3, rounds=2, calls=2))
    assert set(results) == {0, 2}
    assert "| 2 partitions |" in report(results)
