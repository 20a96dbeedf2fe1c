"""The queries advanced sessions share between writes and reads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..schema import LatticeTables
from ..schema_advanced import AdvancedTables, advanced_tables

__all__ = ["Tables", "branch_messages", "latest_rows"]


class Tables:
    """The base tables of a session and the advanced tables beside them."""

    def __init__(self, base: LatticeTables) -> None:
        self.base = base
        self.adv: AdvancedTables = advanced_tables(base)
        self.messages = base.messages
        self.sessions = base.sessions
        self.branches = self.adv.branches
        self.segments = self.adv.segments
        self.structure = self.adv.structure
        self.usage = self.adv.usage


def branch_messages(t: Tables, *columns: Any) -> Select[Any]:
    """``columns`` of the messages a branch holds (bind ``sid`` and ``branch`` in ``where``).

    A branch's messages are those of its session whose ids fall in one of
    its segments. Each segment is an index range scan of ``(session_id, id)``.
    """
    s, m = t.segments, t.messages
    joined = s.join(
        m,
        and_(m.c.session_id == s.c.session_id, m.c.id >= s.c.first_id, m.c.id <= s.c.last_id),
    ).outerjoin(t.structure, t.structure.c.message_id == m.c.id)
    return select(*columns).select_from(joined)


async def latest_rows(
    conn: AsyncConnection, t: Tables, sid: str, branch: str, limit: int, *columns: Any
) -> list[tuple[int, Any]]:
    """``(segment first_id, row of columns)`` of the branch's newest ``limit`` items, newest first.

    A branch's segments are disjoint ranges, so its newest items are in its
    newest segments: read the segments newest first (at most ``limit``, as
    each holds an item) and each one's newest rows, an index range scan of
    ``(session_id, id)``, until ``limit`` are found. One join ordered by id
    would sort every item of the branch instead (10,000 for a long one).
    """
    s, m = t.segments, t.messages
    ranges = (
        await conn.execute(
            select(s.c.first_id, s.c.last_id)
            .where(s.c.session_id == sid, s.c.branch_id == branch)
            .order_by(s.c.first_id.desc())
            .limit(limit)
        )
    ).all()
    found: list[tuple[int, Any]] = []
    for first, last in ranges:
        rows = await conn.execute(
            select(*columns)
            .select_from(m.outerjoin(t.structure, t.structure.c.message_id == m.c.id))
            .where(m.c.session_id == sid, m.c.id >= first, m.c.id <= last)
            .order_by(m.c.id.desc())
            .limit(limit - len(found))
        )
        found.extend((int(first), row) for row in rows)
        if len(found) >= limit:
            break
    return found
