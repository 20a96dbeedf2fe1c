"""Fixtures of the Galera tests: one private 3-node cluster for the whole run.

The cluster (``cluster/galera.py``) is started once, on first use, and
stopped by pid at the end of the run (the fixture's ``finally``, and
``atexit`` should the run be killed). A test that kills a node restarts it,
and :func:`healthy` waits for three synced nodes before every test, so a
test never starts on a degraded cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from cluster.galera import GaleraCluster, missing_tools
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice.engines import make_engine
from lattice.schema import LatticeTables, lattice_tables

DRIVERS = ["aiomysql", "asyncmy"]
NODES = (1, 2, 3)


@pytest.fixture(scope="session")
def galera_cluster() -> Iterator[GaleraCluster]:
    missing = missing_tools()
    if missing:
        pytest.fail(f"the Galera tests need {', '.join(missing)} (apt-get install ...)")
    cluster = GaleraCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def galera(galera_cluster: GaleraCluster) -> GaleraCluster:
    """The cluster, with all three nodes running and synced."""
    for number in NODES:
        if not galera_cluster.node(number).running():
            galera_cluster.restart(number)
    galera_cluster.wait_size(len(NODES))
    return galera_cluster


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def node_engines(galera: GaleraCluster, driver: str) -> AsyncIterator[list[AsyncEngine]]:
    """One engine per node (index 0 is node 1), disposed at the end."""
    engines = [make_engine(galera.url(n, driver)) for n in NODES]
    try:
        yield engines
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.fixture
async def galera_tables(node_engines: list[AsyncEngine]) -> AsyncIterator[LatticeTables]:
    """Fresh uniquely named tables, made on node 1 (DDL replicates), dropped at the end."""
    suffix = uuid.uuid4().hex[:8]
    tables = lattice_tables(f"g_sessions_{suffix}", f"g_messages_{suffix}")
    async with node_engines[0].begin() as conn:
        await conn.run_sync(tables.metadata.create_all)
    for engine in node_engines:  # every node has the tables before the test starts
        await read(engine, f"SELECT COUNT(*) FROM {tables.messages.name}")
    try:
        yield tables
    finally:
        async with node_engines[0].begin() as conn:
            await conn.run_sync(tables.metadata.drop_all)


async def read(engine: AsyncEngine, sql: str, **params: object) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on ``engine``'s node once it has applied every earlier commit.

    ``wsrep_sync_wait = 1``: the read waits until the node has applied every
    write set the cluster had ordered when the read began, so a node's
    answer is the cluster's.
    """
    async with engine.connect() as conn:
        await conn.execute(text("SET SESSION wsrep_sync_wait = 1"))
        result = [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
        await conn.execute(text("SET SESSION wsrep_sync_wait = 0"))
        return result
