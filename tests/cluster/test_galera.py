"""MariaDB Galera (multi-primary, synchronous): Lattice on a private 3-node cluster.

Each test runs through both MySQL drivers (aiomysql's fast path, asyncmy's
general path), with one engine per node, as an application with a
connection string per node would.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from cluster.galera import GaleraCluster
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import lattice.migrations
from lattice import SQLAlchemySession
from lattice.engines import make_engine
from lattice.schema import journal_table_name

from .galera_fixtures import NODES, read

pytestmark = [pytest.mark.cluster, pytest.mark.mysql]

LATTICE = Path(sys.executable).with_name("lattice")
DEFAULT_TABLES = (
    "agent_messages",
    journal_table_name("agent_sessions"),
    "agent_sessions",
    lattice.migrations.VERSION_TABLE,
)


async def drop_default_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for name in DEFAULT_TABLES:
            await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


async def lattice_db(*args: str) -> tuple[int, str]:
    """Run the ``lattice`` command in a process of its own; exit code and output."""
    process = await asyncio.create_subprocess_exec(
        str(LATTICE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def head_everywhere(node_engines: list[AsyncEngine], head: str) -> None:
    for engine in node_engines:
        versions = await read(engine, f"SELECT version_num FROM {lattice.migrations.VERSION_TABLE}")
        assert versions == [(head,)]


async def test_upgrade_on_one_node_then_three_at_once(
    galera: GaleraCluster, driver: str, node_engines: list[AsyncEngine]
) -> None:
    """`lattice db upgrade` on a node, then three started at once on three nodes.

    GET_LOCK is local to a node under Galera: three migrators each took
    "the" lock and ran the same revisions at once (table exists, failed in
    every round).
    """
    head = next(r.revision for r in await lattice.migrations.history() if r.is_head)
    urls = [galera.url(n, driver) for n in NODES]
    await drop_default_tables(node_engines[0])
    code, out = await lattice_db("db", "upgrade", "--url", urls[1])
    assert code == 0, out
    await head_everywhere(node_engines, head)
    for round_ in range(3):
        await drop_default_tables(node_engines[0])
        outcomes = await asyncio.gather(*(lattice_db("db", "upgrade", "--url", u) for u in urls))
        failed = [out for code, out in outcomes if code != 0]
        assert not failed, f"round {round_}: {failed}"
        await head_everywhere(node_engines, head)
        assert await lattice.migrations.check(urls[round_]) == head
    await drop_default_tables(node_engines[0])


async def test_create_tables_racing_on_three_nodes(
    galera: GaleraCluster, driver: str, node_engines: list[AsyncEngine]
) -> None:
    await drop_default_tables(node_engines[0])
    for round_ in range(3):
        # New engines each round: create_tables acts once per engine.
        engines = [make_engine(galera.url(n, driver)) for n in NODES]
        try:
            sessions = [
                SQLAlchemySession(f"race-{round_}", engine=engine, create_tables=True)
                for engine in engines
            ]
            outcomes = await asyncio.gather(
                *(s.add_items([{"n": i}]) for i, s in enumerate(sessions)),
                return_exceptions=True,
            )
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            assert not failed, f"round {round_}: {failed!r}"
            stored = await read(engines[0], "SELECT COUNT(*) FROM agent_messages")
            assert stored == [(3,)]
        finally:
            for engine in engines:
                await engine.dispose()
        await drop_default_tables(node_engines[0])
