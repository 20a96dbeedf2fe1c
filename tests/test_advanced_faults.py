"""Advanced writes whose COMMIT reply is lost (PostgreSQL, MySQL, through a loopback proxy):
the write journal answers exactly, so nothing is written twice and nothing is lost."""

from __future__ import annotations

import uuid
from typing import Any

from agents import Agent, Runner
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import AdvancedSQLAlchemySession
from lattice.schema import LatticeTables
from lattice.schema_advanced import advanced_tables

from .test_advanced import QUIET, model, texts
from .test_faults import _lose_commit_reply, admin, proxied

__all__ = ["admin", "proxied"]  # the fixtures, used by name

Proxied = tuple[Any, AsyncEngine, LatticeTables]


def on(eng: AsyncEngine, tables: LatticeTables, sid: str) -> AdvancedSQLAlchemySession:
    return AdvancedSQLAlchemySession(
        sid, engine=eng, sessions_table=tables.sessions.name, messages_table=tables.messages.name
    )


async def count(engine: AsyncEngine, table: Any, sid: str) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(table).where(table.c.session_id == sid)
        return int((await conn.execute(query)).scalar() or 0)


async def test_lost_commit_replies_of_advanced_writes(proxied: Proxied, admin: AsyncEngine) -> None:
    proxy, eng, tables = proxied
    adv = advanced_tables(tables)
    sid = f"adv-fault-{uuid.uuid4().hex[:8]}"
    session = on(eng, tables, sid)
    agent = Agent(name="a", model=model(("a1", 2)))
    result = await Runner.run(agent, "q1", session=session, run_config=QUIET)

    async def rows(table: Any, n: int) -> Any:
        async def check() -> bool:
            return await count(admin, table, sid) == n

        return check

    # An append: stored once, structure and segment once.
    batch = [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    await _lose_commit_reply(proxy, lambda: session.add_items(batch), await rows(adv.segments, 3))
    assert texts(await on(admin, tables, sid).get_items()) == ["q1", "a1", "q2", "a2"]
    assert await count(admin, adv.structure, sid) == 4
    # Usage: one row, with the run's numbers.
    await _lose_commit_reply(
        proxy, lambda: session.store_run_usage(result), await rows(adv.usage, 1)
    )
    await session.store_run_usage(result)  # and a retry by the caller
    assert (await session.get_session_usage())["total_tokens"] == 22  # type: ignore[index]
    # A branch: made once, and the session is on it.
    await _lose_commit_reply(
        proxy, lambda: session.create_branch_from_turn(2, "b"), await rows(adv.branches, 2)
    )
    assert session.current_branch_id == "b"
    assert texts(await session.get_items()) == ["q1", "a1"]
    # A pop: the caller gets the item, which is gone from the branch only.
    popped = await _lose_commit_reply(proxy, session.pop_item, await rows(adv.segments, 4))
    assert popped is not None and texts([popped]) == ["a1"]
    assert texts(await session.get_items()) == ["q1"]
    assert texts(await session.get_items(branch_id="main")) == ["q1", "a1", "q2", "a2"]
