"""A read replica: catalogue reads and export on the hot standby, sessions on the primary.

The proof that reads are routed is a standby that lags on purpose: with WAL
replay paused, what a session wrote is on the primary (and flushed on the
standby, so synchronous commits go on) but not yet visible on the standby.
A session then still reads its own writes, while listing, counting,
``get_info`` and export show the standby's older state; once replay resumes
they catch up.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from cluster.pg import PgCluster, PgNode
from sqlalchemy import text
from typer.testing import CliRunner, Result

from lattice import SessionStore
from lattice.cli import app
from lattice.engines import make_engine
from lattice.schema import LatticeTables

from .conftest import paused_replay, replayed


def _store(cluster: PgCluster, tables: LatticeTables, **kwargs: object) -> SessionStore:
    return SessionStore.from_url(
        cluster.primary_url(),
        read_url=cluster.standby_url(),
        create_tables=True,
        sessions_table=tables.sessions.name,
        messages_table=tables.messages.name,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_turn_reads_its_own_writes_while_the_replica_lags(
    pg_cluster: PgCluster, table_names: LatticeTables
) -> None:
    async with _store(pg_cluster, table_names) as store:
        old = store.session("old")
        await old.add_items([{"n": 0}])
        await replayed(pg_cluster)
        assert await store.count() == 1

        async with paused_replay(pg_cluster):
            new = store.session("new")
            turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
            await new.add_items(turn)
            assert await new.get_items() == turn  # the session reads the primary
            await old.add_items([{"n": 1}, {"n": 2}])
            assert await old.get_items(limit=2) == [{"n": 1}, {"n": 2}]
            assert await old.pop_item() == {"n": 2}
            await store.set_metadata("old", {"owner": "ann"})  # a write: the primary

            # The catalogue reads the standby, which has not replayed any of it.
            assert await store.count() == 1
            assert await store.totals() == (1, 1)
            assert await store.get_info("new") is None
            info = await store.get_info("old")
            assert info is not None and info.item_count == 1 and info.metadata == {}
            assert [i.session_id for i in (await store.list_sessions()).sessions] == ["old"]
            assert [i.session_id async for i in store.iter_sessions()] == ["old"]
            out = io.StringIO()
            await store.export_jsonl(out)
            exported = [json.loads(line) for line in out.getvalue().splitlines()]
            assert [r["session_id"] for r in exported if r.get("type") == "session"] == ["old"]

        # Replay resumed: the catalogue catches up.
        await replayed(pg_cluster)
        assert await store.totals() == (2, 4)
        info = await store.get_info("old")
        assert info is not None and info.item_count == 2 and info.metadata == {"owner": "ann"}
        assert {i.session_id for i in (await store.list_sessions()).sessions} == {"old", "new"}


async def test_the_replica_is_read_only_to_sessions(
    pg_cluster: PgCluster, table_names: LatticeTables
) -> None:
    """What a misrouted write would meet: the standby refuses it."""
    async with _store(pg_cluster, table_names) as store:
        await store.session("s").add_items([{"n": 1}])
        await replayed(pg_cluster)
        replica_only = SessionStore.from_url(
            pg_cluster.standby_url(),
            sessions_table=table_names.sessions.name,
            messages_table=table_names.messages.name,
        )
        async with replica_only:
            assert await replica_only.session("s").get_items() == [{"n": 1}]
            with pytest.raises(Exception, match="read-only transaction"):
                await replica_only.session("s").add_items([{"n": 2}])


def _replica_connections(standby: PgNode, name: str) -> int:
    return int(
        standby.sql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'")
    )


async def test_engine_ownership(pg_cluster: PgCluster, table_names: LatticeTables) -> None:
    standby = pg_cluster.standby
    assert standby is not None
    # Made from read_url: the store's, disposed by close().
    store = SessionStore.from_url(
        pg_cluster.primary_url(),
        read_url=pg_cluster.standby_url() + "?application_name=lattice_owned",
        create_tables=True,
        sessions_table=table_names.sessions.name,
        messages_table=table_names.messages.name,
    )
    assert store.read_engine is not store.engine
    await store.session("a").add_items([{"n": 1}])
    await replayed(pg_cluster)
    assert await store.count() == 1
    assert _replica_connections(standby, "lattice_owned") >= 1
    await store.close()
    assert _replica_connections(standby, "lattice_owned") == 0

    # Passed in: the caller's, left alone.
    primary = make_engine(pg_cluster.primary_url())
    replica = make_engine(pg_cluster.standby_url())
    try:
        async with SessionStore(
            primary,
            read_engine=replica,
            sessions_table=table_names.sessions.name,
            messages_table=table_names.messages.name,
        ) as mine:
            assert mine.read_engine is replica
            assert await mine.count() == 1
        async with replica.connect() as conn:
            assert (await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar() is True
        async with primary.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await primary.dispose()
        await replica.dispose()


async def test_a_replica_of_another_kind_is_refused(pg_cluster: PgCluster) -> None:
    primary = make_engine(pg_cluster.primary_url())
    sqlite = make_engine("sqlite+aiosqlite:///:memory:")
    try:
        with pytest.raises(ValueError, match="replica of the same database"):
            SessionStore(primary, read_engine=sqlite)
        with pytest.raises(TypeError, match="AsyncEngine"):
            SessionStore(primary, read_engine="postgresql://x")  # type: ignore[arg-type]
    finally:
        await primary.dispose()
        await sqlite.dispose()


async def test_the_command_line_reads_the_catalogue_on_the_replica(pg_cluster: PgCluster) -> None:
    """``lattice sessions list/show/export --read-url`` (the CLI uses the default tables)."""
    urls = ["--url", pg_cluster.primary_url(), "--read-url", pg_cluster.standby_url()]

    async def cli(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, app, [*args, *urls])

    async with SessionStore.from_url(pg_cluster.primary_url(), create_tables=True) as store:
        await store.session("cli-old").add_items([{"n": 1}])
        await replayed(pg_cluster)
        async with paused_replay(pg_cluster):
            await store.session("cli-new").add_items([{"n": 2}])
            listed = await cli("sessions", "list", "--json", "--prefix", "cli-")
            assert listed.exit_code == 0, listed.output
            assert [s["session_id"] for s in json.loads(listed.stdout)["sessions"]] == ["cli-old"]
            shown = await cli("sessions", "show", "cli-new", "--json")
            assert shown.exit_code == 1  # not on the replica yet
            exported = await cli("sessions", "export", "-", "--prefix", "cli-")
            assert exported.exit_code == 0, exported.output
            assert '"cli-old"' in exported.stdout and '"cli-new"' not in exported.stdout
        await replayed(pg_cluster)
        shown = await cli("sessions", "show", "cli-new", "--json")
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["items"] == [{"n": 2}]
