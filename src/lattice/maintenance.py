"""Repairs for tables that writers other than Lattice have touched.

``agent_sessions.item_count`` is kept exact by every Lattice write, in the
transaction that adds or removes the items. Writers that do not know the
column, above all the OpenAI Agents SDK's own ``SQLAlchemySession`` still
running during a rolling deploy after ``lattice db upgrade``, insert and
delete items without changing it, so the count drifts. The count serves
listings, ``totals()`` and progress bars and the store's batching; the items
themselves are never affected (reads and pops go by the item rows).

:func:`count_drift` finds sessions whose count is wrong;
:func:`repair_counts` recounts them. ``lattice db repair-counts`` runs both
from the shell (``--check`` only reports). docs/deployment.md gives the
deploy order that needs no repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .engines import check_engine, make_engine
from .schema import DEFAULT_MESSAGES_TABLE, DEFAULT_SESSIONS_TABLE, LatticeTables, lattice_tables

__all__ = ["CountDrift", "count_drift", "repair_counts"]

# Sessions recounted per transaction: each holds those sessions' row locks.
_REPAIR_BATCH = 500


@dataclass
class CountDrift:
    """Sessions whose ``item_count`` differs from their items.

    Attributes:
        sessions: ``(session_id, item_count stored, items counted)`` per session.
        repaired: How many of them were recounted (0 for a check).
    """

    sessions: list[tuple[str, int, int]] = field(default_factory=list)
    repaired: int = 0

    @property
    def items_off(self) -> int:
        """The sum of the differences, in items."""
        return sum(abs(stored - counted) for _, stored, counted in self.sessions)


async def _drifted(conn: AsyncConnection, tables: LatticeTables) -> list[tuple[str, int, int]]:
    s, m = tables.sessions, tables.messages
    counted = select(m.c.session_id, func.count().label("n")).group_by(m.c.session_id).subquery()
    actual = func.coalesce(counted.c.n, 0)
    query = (
        select(s.c.session_id, s.c.item_count, actual)
        .select_from(s.outerjoin(counted, counted.c.session_id == s.c.session_id))
        .where(s.c.item_count != actual)
        .order_by(s.c.session_id)
    )
    return [(str(r[0]), int(r[1]), int(r[2])) for r in (await conn.execute(query)).all()]


async def _recount(conn: AsyncConnection, tables: LatticeTables, ids: Sequence[str]) -> int:
    s, m = tables.sessions, tables.messages
    # Counted inside the UPDATE, under the row locks Lattice's writers also
    # take: a Lattice write that commits meanwhile is counted exactly once.
    items = (
        select(func.count())
        .select_from(m)
        .where(m.c.session_id == s.c.session_id)
        .scalar_subquery()
    )
    result = await conn.execute(update(s).where(s.c.session_id.in_(ids)).values(item_count=items))
    return int(result.rowcount or 0)


async def count_drift(
    target: str | AsyncEngine,
    *,
    repair: bool = False,
    sessions_table: str = DEFAULT_SESSIONS_TABLE,
    messages_table: str = DEFAULT_MESSAGES_TABLE,
) -> CountDrift:
    """Find (and with ``repair=True`` recount) sessions whose ``item_count`` is wrong.

    Args:
        target: A URL (an engine is made and disposed here) or your engine.
        repair: Recount the drifted sessions, ``_REPAIR_BATCH`` per transaction.
        sessions_table: The sessions table's name.
        messages_table: The messages table's name.

    Returns:
        What was found; ``repaired`` counts the sessions recounted.
    """
    tables = lattice_tables(sessions_table, messages_table)
    engine = make_engine(target) if isinstance(target, str) else check_engine(target, "count_drift")
    try:
        async with engine.connect() as conn:
            found = CountDrift(await _drifted(conn, tables))
        if repair:
            ids = [session_id for session_id, _, _ in found.sessions]
            for start in range(0, len(ids), _REPAIR_BATCH):
                async with engine.begin() as conn:
                    found.repaired += await _recount(
                        conn, tables, ids[start : start + _REPAIR_BATCH]
                    )
        return found
    finally:
        if engine is not target:
            await engine.dispose()


async def repair_counts(
    target: str | AsyncEngine,
    *,
    sessions_table: str = DEFAULT_SESSIONS_TABLE,
    messages_table: str = DEFAULT_MESSAGES_TABLE,
) -> CountDrift:
    """Recount every session whose ``item_count`` is wrong (``count_drift(repair=True)``)."""
    return await count_drift(
        target, repair=True, sessions_table=sessions_table, messages_table=messages_table
    )
