"""Failover: writers through a multi-host URL while the standby is promoted.

Several sessions append in loops through
``?host=primary&host=standby&target_session_attrs=read-write``. The primary
is stopped as in a crash (``pg_ctl stop -m immediate``) and the synchronous
standby promoted. Then:

* every ``add_items`` that returned is on the new primary exactly once,
  whole and in order (synchronous replication: an acknowledged commit was
  flushed on the standby before the reply);
* calls made while no node is writable raise, within a bounded time (a
  call in flight when the primary died waits for the promotion, up to
  ``lattice.writes.OUTCOME_WAIT_S``, and is answered from the new primary's
  write journal); a call that raised
  left its batch at most once (a lost COMMIT reply is answered from the
  write journal on the new primary, or raises ``WriteOutcomeUnknownError``);
* the same session objects work again afterwards, not re-created.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from cluster.pg import PgCluster
from sqlalchemy import select

from lattice import SessionStore
from lattice.engines import make_engine
from lattice.schema import LatticeTables

WRITERS = 6
BATCH = 3
#: Seconds of writing before the crash, and successful calls each writer needs after it.
BEFORE_S = 1.0
AFTER_CALLS = 5
#: A call that takes longer than this counts as hung (the switch itself takes ~1-3 s).
HANG_S = 30.0


@dataclass
class Writer:
    name: str
    acknowledged: list[int] = field(default_factory=list)
    raised: list[tuple[int, str]] = field(default_factory=list)
    after_switch: int = 0
    slowest: float = 0.0


async def _write(store: SessionStore, writer: Writer, switched: asyncio.Event) -> None:
    session = store.session(writer.name)  # one object for the whole run
    batch = 0
    while writer.after_switch < AFTER_CALLS:
        batch += 1
        items = [{"w": writer.name, "b": batch, "i": i} for i in range(BATCH)]
        done_before = switched.is_set()
        started = time.monotonic()
        try:
            await session.add_items(items)
        except Exception as exc:
            writer.raised.append((batch, type(exc).__name__))
            await asyncio.sleep(0.05)
        else:
            writer.acknowledged.append(batch)
            if done_before:
                writer.after_switch += 1
        finally:
            writer.slowest = max(writer.slowest, time.monotonic() - started)


async def test_failover_loses_and_duplicates_nothing(
    pg_pair: PgCluster, table_names: LatticeTables
) -> None:
    standby = pg_pair.standby
    assert standby is not None
    store = SessionStore.from_url(
        pg_pair.failover_url() + "&connect_timeout=5",
        create_tables=True,
        sessions_table=table_names.sessions.name,
        messages_table=table_names.messages.name,
    )
    writers = [Writer(f"w{n}") for n in range(WRITERS)]
    switched = asyncio.Event()
    try:
        tasks = [asyncio.ensure_future(_write(store, w, switched)) for w in writers]
        await asyncio.sleep(BEFORE_S)
        assert all(w.acknowledged for w in writers), "no writes before the crash"
        await asyncio.to_thread(pg_pair.primary.stop, "immediate")
        # No writable node now: a new call raises (within the connect timeout),
        # it neither hangs nor reports success.
        probe = store.session("probe")
        async with asyncio.timeout(HANG_S):
            for call in (probe.add_items([{"p": 1}]), probe.get_items()):
                with pytest.raises(Exception) as caught:
                    await call
                print("during the switch:", type(caught.value).__name__, caught.value)
        await asyncio.to_thread(standby.promote)
        switched.set()
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks)
        # The same store and session objects work again, reading through the URL.
        await probe.add_items([{"p": 2}])
        assert await probe.get_items() == [{"p": 2}]
        for w in writers:
            got = await store.session(w.name).get_items()
            assert len(got) % BATCH == 0
    finally:
        await store.close()

    # Check on the new primary directly.
    engine = make_engine(pg_pair.standby_url())
    try:
        m, s = table_names.messages, table_names.sessions
        async with engine.connect() as conn:
            query = select(m.c.session_id, m.c.message_data).order_by(m.c.id)
            rows = (await conn.execute(query)).all()
            counts = dict((await conn.execute(select(s.c.session_id, s.c.item_count))).all())
    finally:
        await engine.dispose()
    for w in writers:
        items = [json.loads(r[1]) for r in rows if r[0] == w.name]
        assert counts[w.name] == len(items), "item_count drifted from the rows"
        batches = [items[k]["b"] for k in range(0, len(items), BATCH)]
        for k, b in enumerate(batches):  # whole and contiguous
            assert items[k * BATCH : (k + 1) * BATCH] == [
                {"w": w.name, "b": b, "i": i} for i in range(BATCH)
            ]
        seen = Counter(batches)
        assert all(n == 1 for n in seen.values()), f"a batch stored twice: {seen}"
        assert set(w.acknowledged) <= set(seen), "an acknowledged batch is missing"
        assert batches == sorted(batches), "batches out of order"
        raised = {b for b, _ in w.raised}
        assert set(seen) <= set(w.acknowledged) | raised
        assert w.slowest < HANG_S, f"a call took {w.slowest:.1f} s"
    kinds = Counter(kind for w in writers for _, kind in w.raised)
    slowest = max(w.slowest for w in writers)
    acknowledged = sum(len(w.acknowledged) for w in writers)
    print(f"failover: {acknowledged} acknowledged, raised {dict(kinds)}, slowest {slowest:.2f} s")
