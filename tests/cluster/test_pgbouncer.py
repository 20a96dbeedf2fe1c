"""PgBouncer in transaction pool mode (Debian's pgbouncer, a private process).

In transaction mode each transaction, and each statement outside one, may
run on a different server connection, so a statement prepared on one is
unknown on the next: asyncpg's statement cache then fails with
``prepared statement "__asyncpg_stmt_..." does not exist``, and psycopg's
automatic preparing likewise. With the drivers' own settings in the URL
(asyncpg ``statement_cache_size=0``, psycopg ``prepare_threshold=none``)
Lattice uses unnamed statements only (docs/scale.md), fast path included.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from cluster.pg import PgCluster

from lattice import SessionStore
from lattice.schema import LatticeTables

SESSIONS = 20
CALLS = 25

#: The setting each driver needs behind a transaction-mode pooler: in the URL,
#: or for asyncpg also as a driver argument (engine_kwargs).
POOLER_SETTINGS = {
    "asyncpg-url": ("asyncpg", "?statement_cache_size=0", {}),
    "asyncpg-connect-args": ("asyncpg", "", {"connect_args": {"statement_cache_size": 0}}),
    "psycopg-url": ("psycopg", "?prepare_threshold=none", {}),
}


async def _mixed_calls(store: SessionStore, index: int) -> list[dict[str, int]]:
    """Random appends, reads, pops, clears and catalogue reads; the history it expects."""
    rng = random.Random(index)
    session = store.session(f"s{index}")
    expected: list[dict[str, int]] = []
    for call in range(CALLS):
        roll = rng.random()
        if roll < 0.4:
            batch = [{"s": index, "c": call, "i": i} for i in range(rng.randint(1, 3))]
            await session.add_items(batch)
            expected += batch
        elif roll < 0.6:
            assert await session.get_items(limit=5) == expected[-5:]
        elif roll < 0.75:
            popped = await session.pop_item()
            assert popped == (expected.pop() if expected else None)
        elif roll < 0.8:
            await session.clear_session()
            expected = []
        elif roll < 0.9:
            await store.set_metadata(f"s{index}", {"owner": f"o{index % 3}", "n": call})
            info = await store.get_info(f"s{index}")
            assert info is not None and info.metadata["n"] == call
        else:
            page = await store.list_sessions(owner=f"o{index % 3}", limit=50)
            assert all(i.metadata["owner"] == f"o{index % 3}" for i in page.sessions)
            await store.count(prefix="s")
    assert await session.get_items() == expected
    return expected


@pytest.mark.parametrize("setting", list(POOLER_SETTINGS))
async def test_concurrent_sessions_through_pgbouncer(
    pg_cluster: PgCluster, table_names: LatticeTables, setting: str
) -> None:
    driver, query, engine_kwargs = POOLER_SETTINGS[setting]
    async with SessionStore.from_url(
        pg_cluster.bouncer_url(driver) + query,
        engine_kwargs=engine_kwargs,
        create_tables=True,
        sessions_table=table_names.sessions.name,
        messages_table=table_names.messages.name,
    ) as store:
        histories = await asyncio.gather(*(_mixed_calls(store, n) for n in range(SESSIONS)))
        total = sum(len(h) for h in histories)
        assert await store.totals(prefix="s") == (SESSIONS, total) or total == 0
        for n, history in enumerate(histories):
            info = await store.get_info(f"s{n}")
            assert info is not None and info.item_count == len(history)
