"""Cancelling ``add_items``, ``pop_item`` and ``clear_session`` never half-writes or loses an item.

Two ways in, on every backend:

* exactly at each statement and at COMMIT of each call (the cancellation is
  requested from inside the driver call, see :class:`CancelAt`);
* at random moments, hundreds of times, with several callers per session,
  checked at the end with an item ledger: every item has a unique id, and
  items stored plus items handed to callers must equal what was added, each
  batch whole (a cancelled add may or may not have landed).

``LATTICE_CANCEL_OPS`` sets how many random cancellations each backend gets
(300 by default).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore
from lattice.schema import LatticeTables
from tests.reliability import (
    CancelAt,
    Ledger,
    Pause,
    engine_for,
    instrument,
    session_on,
    settle,
    stored,
    stored_count,
)

RANDOM_OPS = int(os.environ.get("LATTICE_CANCEL_OPS", "300"))


def _sid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


async def _cancelled_at(call: Any, engine: AsyncEngine, n: int) -> tuple[bool, Any]:
    """Run ``call()`` and cancel it at its ``n``-th statement; (was it cancelled, result)."""
    task = asyncio.ensure_future(call())
    trigger = CancelAt(engine, task, n)
    try:
        return False, await task
    except asyncio.CancelledError:
        assert trigger.fired, "cancelled by something else"
        return True, None
    finally:
        await settle()


@pytest.mark.parametrize("call", ["add", "pop", "clear"])
async def test_cancel_at_every_statement(
    engine: AsyncEngine, tables: LatticeTables, call: str
) -> None:
    """Cancel at statement 0, 1, 2 ... until the call runs out of statements."""
    instrument(engine)
    for n in range(12):
        session = session_on(engine, tables, _sid(f"at{n}"))
        before = [{"n": n, "i": i} for i in range(4)]
        await session.add_items(before)
        batch = [{"n": n, "new": i} for i in range(3)]
        calls = {
            "add": lambda s=session, b=batch: s.add_items(b),
            "pop": session.pop_item,
            "clear": session.clear_session,
        }
        cancelled, result = await _cancelled_at(calls[call], engine, n)
        items = await stored(engine, tables, session.session_id)
        if call == "add":
            # Once its write was sent, the write finishes: the whole batch, once.
            assert items in (before, before + batch)
            assert cancelled or items == before + batch
        elif call == "pop":
            # A cancelled caller never received the item, so it is back in place.
            assert items == (before if cancelled else before[:-1])
            assert cancelled or result == before[-1]
        else:
            assert items in ([], before)
            assert cancelled or items == []
        assert await stored_count(engine, tables, session.session_id) == len(items)
        # The same object works afterwards.
        await session.add_items([{"after": n}])
        assert await session.pop_item() == {"after": n}
        if not cancelled:
            break
    else:
        pytest.fail("the call still had statements to cancel after 12")


@pytest.mark.only_backends("sqlite_file", "postgres", "mysql")  # a second engine on the data
@pytest.mark.parametrize("meanwhile", ["clear", "delete"])
async def test_a_put_back_does_not_undo_a_later_clear_or_delete(
    engine: AsyncEngine, tables: LatticeTables, meanwhile: str
) -> None:
    """A cancelled pop's item stays gone if the session was cleared after the pop.

    The interleaving the random test once hit on PostgreSQL: the pop commits,
    its caller is cancelled, another caller clears the session (or deletes
    it), and only then does the item go back. It must not come back: the
    clear, which came later, would have removed it too.
    """
    instrument(engine)
    session = session_on(engine, tables, _sid(f"late-{meanwhile}"))
    await session.add_items([{"n": i} for i in range(3)])
    at_commit = Pause(engine)
    sessions_name = tables.sessions.name
    at_put_back = Pause(
        engine,
        lambda sql: sql.lstrip().upper().startswith("INSERT") and f"{sessions_name} (" in sql,
    )
    try:
        pop = asyncio.ensure_future(session.pop_item())
        await asyncio.wait_for(at_commit.reached.wait(), 20)
        pop.cancel()
        at_commit.release()
        await asyncio.wait_for(at_put_back.reached.wait(), 20)
        # The pop has committed and its put-back is about to start: another
        # process (its own engine, so no lock of this one is involved) acts now.
        async with engine_for(engine.url) as other:
            if meanwhile == "clear":
                await session_on(other, tables, session.session_id).clear_session()
            else:
                store = SessionStore(
                    other, sessions_table=sessions_name, messages_table=tables.messages.name
                )
                assert await store.delete_session(session.session_id)
        at_put_back.release()
        with pytest.raises(asyncio.CancelledError):
            await pop
        await settle()
    finally:
        at_commit.close()
        at_put_back.close()
    assert await stored(engine, tables, session.session_id) == []
    assert await stored_count(engine, tables, session.session_id) == (
        0 if meanwhile == "clear" else None
    )


async def test_random_cancellations_lose_and_duplicate_nothing(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    rng = random.Random(20240607)
    # Sessions 0 and 1 see adds and pops: nothing may be lost. Session 2 also
    # sees clears, which may remove any batch, but never half of one.
    sessions = [session_on(engine, tables, _sid(f"rand{i}")) for i in range(3)]
    ledgers = [Ledger() for _ in sessions]
    counts = {"cancelled": 0, "completed": 0}

    async def one_op(index: int) -> None:
        session, ledger = sessions[index], ledgers[index]
        roll = rng.random()
        clearing = index == 2 and roll < 0.15
        if clearing:
            ledger.clear_attempted()
            call: Any = session.clear_session
            batch_id = None
        elif roll < 0.6:
            batch_id, items = ledger.new_batch(f"s{index}b", rng.randint(1, 6))
            call = lambda: session.add_items(items)  # noqa: E731
        else:
            batch_id, call = None, session.pop_item
        task = asyncio.ensure_future(call())
        # From "before it starts" through "well after COMMIT", or not at all.
        delay = rng.choice([0, 0.0002, 0.001, 0.003, 0.01, 0.03, None])
        if delay is not None:
            asyncio.get_running_loop().call_later(delay, task.cancel)
        try:
            result = await task
        except asyncio.CancelledError:
            counts["cancelled"] += 1
            return
        counts["completed"] += 1
        if clearing:
            ledger.clear_finished()
        elif batch_id is not None:
            ledger.confirmed.add(batch_id)
        elif isinstance(result, dict):
            ledger.popped.append(result["id"])

    async def worker(index: int, ops: int) -> None:
        for _ in range(ops):
            await one_op(index)

    per_worker = max(1, RANDOM_OPS // 6)
    await asyncio.gather(*(worker(i % 3, per_worker) for i in range(6)))
    await settle()
    for session, ledger in zip(sessions, ledgers, strict=True):
        items = await stored(engine, tables, session.session_id)
        ledger.check([item["id"] for item in items])
        count = await stored_count(engine, tables, session.session_id)
        assert (count or 0) == len(items), "item_count drifted from the rows"
        assert await session.get_items() == items
    # The run must really have cancelled calls, and let others finish.
    assert counts["cancelled"] >= RANDOM_OPS // 4, counts
    assert counts["completed"] >= RANDOM_OPS // 10, counts
