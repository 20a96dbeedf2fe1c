"""The reads of advanced sessions: a branch's items, turns, structure, branches and usage.

Each runs on one connection the session's read path hands out
(:func:`lattice.writes.read`): one statement, except the latest items of a
branch, read segment by segment (:func:`lattice.advanced.tables.latest_rows`).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..schema_advanced import BRANCH_ACTIVE, MAIN_BRANCH
from .tables import Tables, branch_messages, latest_rows

__all__ = [
    "branch_state",
    "branches",
    "items",
    "preview",
    "session_usage",
    "structure_rows",
    "timestamp",
    "turn_usage",
    "user_turns",
]


def timestamp(value: dt.datetime | None) -> str | None:
    """A stored time as the Agents SDK's SQLite shows it: ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def preview(content: Any, max_length: int | None = None) -> str:
    """A user message's content as text, cut to ``max_length`` characters plus ``...``."""
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    if max_length is not None and len(text) > max_length:
        return text[:max_length] + "..."
    return text


def _of(t: Tables, sid: str, branch: str) -> Any:
    s = t.segments
    return and_(s.c.session_id == sid, s.c.branch_id == branch)


async def items(
    conn: AsyncConnection, t: Tables, sid: str, branch: str, limit: int | None
) -> list[str]:
    """The stored texts of the branch's latest ``limit`` items (all for ``None``), oldest first.

    Before an advanced session first writes to a history plain sessions
    stored, ``main`` has no row yet: it is that whole history.
    """
    m = t.messages
    if limit is None:
        query = branch_messages(t, m.c.message_data).where(_of(t, sid, branch))
        found = await _latest(conn, query, m, None)
    else:
        rows = await latest_rows(conn, t, sid, branch, limit, m.c.message_data)
        found = [row[0] for _, row in reversed(rows)]
    if not found and branch == MAIN_BRANCH and await branch_state(conn, t, sid, branch) is None:
        plain = select(m.c.message_data).where(m.c.session_id == sid)
        found = await _latest(conn, plain, m, limit)
    return found


async def _latest(conn: AsyncConnection, query: Any, m: Any, limit: int | None) -> list[str]:
    if limit is None:
        return [row[0] for row in await conn.execute(query.order_by(m.c.id))]
    rows = (await conn.execute(query.order_by(m.c.id.desc()).limit(limit))).all()
    return [row[0] for row in reversed(rows)]


async def user_turns(
    conn: AsyncConnection, t: Tables, sid: str, branch: str
) -> list[tuple[int, str, dt.datetime]]:
    """``(turn, text, created_at)`` of each user message of the branch, in order."""
    m, st = t.messages, t.structure
    query = (
        branch_messages(t, st.c.turn, m.c.message_data, m.c.created_at)
        .where(_of(t, sid, branch), st.c.message_type == "user")
        .order_by(m.c.id)
    )
    return [(int(r[0]), r[1], r[2]) for r in await conn.execute(query)]


async def structure_rows(
    conn: AsyncConnection, t: Tables, sid: str, branch: str
) -> list[tuple[int, str, str | None]]:
    """``(turn, type, tool)`` of each item of the branch, in order."""
    m, st = t.messages, t.structure
    query = (
        branch_messages(t, st.c.turn, st.c.message_type, st.c.tool_name)
        .where(_of(t, sid, branch))
        .order_by(m.c.id)
    )
    return [(int(r[0] or 0), str(r[1] or "other"), r[2]) for r in await conn.execute(query)]


async def branch_state(conn: AsyncConnection, t: Tables, sid: str, branch: str) -> str | None:
    """The branch's state (``"a"`` while it exists), or ``None`` if it was never made."""
    b = t.branches
    query = select(b.c.state).where(b.c.session_id == sid, b.c.branch_id == branch)
    return (await conn.execute(query)).scalar()


async def branches(conn: AsyncConnection, t: Tables, sid: str) -> list[dict[str, Any]]:
    """The session's branches with their item and user-turn counts, oldest first."""
    b, s, m, st = t.branches, t.segments, t.messages, t.structure
    joined = (
        b.outerjoin(s, and_(s.c.session_id == b.c.session_id, s.c.branch_id == b.c.branch_id))
        .outerjoin(
            m,
            and_(m.c.session_id == s.c.session_id, m.c.id >= s.c.first_id, m.c.id <= s.c.last_id),
        )
        .outerjoin(st, st.c.message_id == m.c.id)
    )
    query = (
        select(
            b.c.branch_id,
            func.count(m.c.id),
            func.count(case((st.c.message_type == "user", 1))),
            b.c.created_at,
            b.c.parent_branch_id,
            b.c.from_turn,
        )
        .select_from(joined)
        .where(b.c.session_id == sid, b.c.state == BRANCH_ACTIVE)
        .group_by(b.c.branch_id, b.c.created_at, b.c.parent_branch_id, b.c.from_turn)
        .order_by(b.c.created_at, b.c.branch_id)
    )
    return [
        {
            "branch_id": row[0],
            "message_count": int(row[1]),
            "user_turns": int(row[2]),
            "created_at": timestamp(row[3]),
            "parent_branch_id": row[4],
            "from_turn": row[5],
        }
        for row in await conn.execute(query)
    ]


_SUMS = ("requests", "input_tokens", "output_tokens", "total_tokens")


async def session_usage(
    conn: AsyncConnection, t: Tables, sid: str, branch: str | None
) -> dict[str, int] | None:
    """Usage summed over the session's turns (one branch's, or all), or ``None`` if none."""
    u = t.usage
    where = [u.c.session_id == sid]
    if branch:
        where.append(u.c.branch_id == branch)
    query = select(*(func.sum(u.c[name]) for name in _SUMS), func.count()).where(*where)
    row = (await conn.execute(query)).first()
    if row is None or row[0] is None:
        return None
    found = {name: int(value or 0) for name, value in zip(_SUMS, row[:4], strict=True)}
    found["total_turns"] = int(row[4] or 0)
    return found


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


async def turn_usage(
    conn: AsyncConnection, t: Tables, sid: str, branch: str, turn: int | None
) -> list[dict[str, Any]]:
    """Usage rows of the branch's turns (one turn, or all by turn number)."""
    u = t.usage
    query = select(
        u.c.turn,
        *(u.c[name] for name in _SUMS),
        u.c.input_tokens_details,
        u.c.output_tokens_details,
    ).where(u.c.session_id == sid, u.c.branch_id == branch)
    if turn is not None:
        query = query.where(u.c.turn == turn)
    return [
        {
            "user_turn_number": int(row[0]),
            **{name: int(value) for name, value in zip(_SUMS, row[1:5], strict=True)},
            "input_tokens_details": _loads(row[5]),
            "output_tokens_details": _loads(row[6]),
        }
        for row in await conn.execute(query.order_by(u.c.turn))
    ]
