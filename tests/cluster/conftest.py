"""Fixtures of the cluster tests (``make test-cluster``): private clusters on loopback.

Nothing here uses the shared servers of ``tests/conftest.py``. The
PostgreSQL cluster (``cluster/pg.py``: a primary, a synchronous hot standby
and PgBouncer in transaction mode, ports 55400-55402) is started once per
run, on first use, and stopped by pid at the end (the fixture's ``finally``,
and ``atexit`` should the run end otherwise, e.g. on Ctrl-C). Tests that kill or promote nodes
get a cluster of their own (:func:`pg_pair`, ports 55410-55411).

Every test in this directory gets the ``cluster`` marker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cluster.pg import PgCluster, PgNode, missing_tools

from lattice.schema import LatticeTables, lattice_tables

HERE = Path(__file__).resolve().parent
#: Ports of the shared PostgreSQL cluster and of the per-test failover pairs.
PG_PORT = 55400
PG_PAIR_PORT = 55410
#: Seconds the standby may take to replay what the primary wrote.
REPLAY_TIMEOUT_S = 30.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


def _require(pgbouncer: bool = True) -> None:
    missing = missing_tools(pgbouncer=pgbouncer)
    if missing:
        pytest.fail(f"the PostgreSQL cluster tests need {', '.join(missing)}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Primary + synchronous hot standby + PgBouncer (transaction mode), for the whole run."""
    _require()
    with PgCluster(PG_PORT) as cluster:
        yield cluster


@pytest.fixture
def pg_pair() -> Iterator[PgCluster]:
    """A primary and its synchronous standby of this test's own (it may kill them)."""
    _require(pgbouncer=False)
    with PgCluster(PG_PAIR_PORT, pgbouncer=False) as cluster:
        yield cluster


@pytest.fixture
def table_names() -> LatticeTables:
    """Fresh table names for this test (the store creates them on the primary)."""
    tag = uuid.uuid4().hex[:10]
    return lattice_tables(f"c{tag}_sessions", f"c{tag}_messages")


def wait_replayed(primary: PgNode, standby: PgNode, timeout: float = REPLAY_TIMEOUT_S) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    lsn = primary.sql("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") != "t":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the standby did not replay up to {lsn} within {timeout} s")
        time.sleep(0.05)


async def replayed(cluster: PgCluster) -> None:
    """:func:`wait_replayed` off the event loop."""
    assert cluster.standby is not None
    await asyncio.to_thread(wait_replayed, cluster.primary, cluster.standby)


@asynccontextmanager
async def paused_replay(cluster: PgCluster) -> AsyncIterator[PgNode]:
    """The standby with WAL replay paused (it keeps receiving, so commits go on)."""
    standby = cluster.standby
    assert standby is not None
    await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_pause()")
    try:
        yield standby
    finally:
        await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_resume()")


# The Galera cluster's fixtures (cluster/galera.py, ports 44301-44303 and 45301-45323).
from .galera_fixtures import (  # noqa: E402, F401 - fixtures for test_galera.py
    driver,
    galera,
    galera_cluster,
    galera_tables,
    node_engines,
)
