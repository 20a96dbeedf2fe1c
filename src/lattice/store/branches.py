"""Branches, item structure and usage of advanced sessions in exports, imports and copies.

Format version 2 adds one optional record per session, after its items::

    {"type": "branches", "branches": [{"branch_id": "main", ...}, ...],
     "segments": [["main", 0, 5], ...], "structure": [["user", 1, null], ...],
     "usage": [{"branch_id": "main", "turn": 1, "requests": 1, ...}, ...]}

Items are named by their position among the session's items in the file
(0 for the first), never by database id, so an import into any database
rebuilds the same branches over the ids it assigns. ``structure`` has one
entry per item (``null`` for an item no advanced session classified).
"""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..schema import LatticeTables
from ..schema_advanced import BRANCH_ACTIVE, USAGE_VALUE_COLUMNS, advanced_tables

__all__ = ["Branches", "check_record", "read_branches", "write_branches"]

RECORD_TYPE = "branches"
_BRANCH_KEYS = ("branch_id", "parent_branch_id", "from_turn", "state", "last_turn", "created_at")
_USAGE_KEYS = ("branch_id", "turn", *USAGE_VALUE_COLUMNS, "created_at")


@dataclass(frozen=True)
class Branches:
    """A session's advanced record, as the file carries it (positions, not ids)."""

    record: dict[str, Any]

    def line_record(self) -> dict[str, Any]:
        return {"type": RECORD_TYPE, **self.record}


def _stamp(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


async def read_branches(
    conn: AsyncConnection, tables: LatticeTables, session_id: str
) -> Branches | None:
    """The session's branches, segments, structure and usage by item position, or ``None``."""
    adv = advanced_tables(tables)
    b = adv.branches
    branches = (
        await conn.execute(
            select(*(b.c[k] for k in _BRANCH_KEYS)).where(b.c.session_id == session_id)
        )
    ).all()
    if not branches:
        return None
    m, st, s, u = tables.messages, adv.structure, adv.segments, adv.usage
    rows = (
        await conn.execute(
            select(m.c.id, st.c.message_type, st.c.turn, st.c.tool_name)
            .select_from(m.outerjoin(st, st.c.message_id == m.c.id))
            .where(m.c.session_id == session_id)
            .order_by(m.c.id)
        )
    ).all()
    ids = [int(r[0]) for r in rows]
    segments = []
    for branch, first, last in await conn.execute(
        select(s.c.branch_id, s.c.first_id, s.c.last_id)
        .where(s.c.session_id == session_id)
        .order_by(s.c.branch_id, s.c.first_id)
    ):
        start, end = bisect.bisect_left(ids, int(first)), bisect.bisect_right(ids, int(last)) - 1
        if start <= end:  # a range whose rows are all gone holds nothing
            segments.append([branch, start, end])
    usage = (
        await conn.execute(
            select(*(u.c[k] for k in _USAGE_KEYS)).where(u.c.session_id == session_id)
        )
    ).all()
    return Branches(
        {
            "branches": [dict(zip(_BRANCH_KEYS, map(_stamp, r), strict=True)) for r in branches],
            "segments": segments,
            "structure": [None if r[1] is None else [r[1], r[2], r[3]] for r in rows],
            "usage": [dict(zip(_USAGE_KEYS, map(_stamp, r), strict=True)) for r in usage],
        }
    )


def check_record(record: dict[str, Any], items: int, parse_time: Any) -> Branches:
    """Check a ``branches`` record of a session with ``items`` items (raises ``ValueError``)."""
    branches, segments = record.get("branches"), record.get("segments")
    structure, usage = record.get("structure"), record.get("usage")
    if not all(isinstance(v, list) for v in (branches, segments, structure, usage)):
        raise ValueError("a branches record needs the lists branches, segments, structure, usage")
    names = set()
    for entry in branches:  # type: ignore[union-attr]
        if not isinstance(entry, dict) or not isinstance(entry.get("branch_id"), str):
            raise ValueError("each branch needs a branch_id")
        entry["created_at"] = parse_time(entry, "created_at")
        names.add(entry["branch_id"])
    for segment in segments:  # type: ignore[union-attr]
        ok = (
            isinstance(segment, list)
            and len(segment) == 3
            and segment[0] in names
            and all(isinstance(p, int) and 0 <= p < items for p in segment[1:])
            and segment[1] <= segment[2]
        )
        if not ok:
            raise ValueError(f"bad segment {segment!r} (a session with {items} items)")
    if len(structure) != items:  # type: ignore[arg-type]
        raise ValueError(f"structure has {len(structure)} entries for {items} items")  # type: ignore[arg-type]
    for entry in usage:  # type: ignore[union-attr]
        if not isinstance(entry, dict) or entry.get("branch_id") not in names:
            raise ValueError("each usage row needs the branch_id of a branch")
        entry["created_at"] = parse_time(entry, "created_at")
    return Branches(record)


async def write_branches(
    conn: AsyncConnection, tables: LatticeTables, session_id: str, branches: Branches
) -> None:
    """Rebuild a session's advanced rows over its items just imported (in their order)."""
    adv = advanced_tables(tables)
    m = tables.messages
    ids = [
        int(r[0])
        for r in await conn.execute(
            select(m.c.id).where(m.c.session_id == session_id).order_by(m.c.id)
        )
    ]
    record = branches.record
    sid = {"session_id": session_id}
    await conn.execute(
        insert(adv.branches),
        [
            {
                **sid,
                **{k: entry.get(k) for k in _BRANCH_KEYS},
                "state": entry.get("state") or BRANCH_ACTIVE,
                "last_turn": entry.get("last_turn") or 0,
            }
            for entry in record["branches"]
        ],
    )
    structure = [
        {**sid, "message_id": ids[i], "message_type": e[0], "turn": e[1], "tool_name": e[2]}
        for i, e in enumerate(record["structure"])
        if e is not None
    ]
    if structure:
        await conn.execute(insert(adv.structure), structure)
    if record["segments"]:
        await conn.execute(
            insert(adv.segments),
            [
                {**sid, "branch_id": b, "first_id": ids[f], "last_id": ids[last]}
                for b, f, last in record["segments"]
            ],
        )
    if record["usage"]:
        await conn.execute(
            insert(adv.usage),
            [{**sid, **{k: entry.get(k) for k in _USAGE_KEYS}} for entry in record["usage"]],
        )


async def branch_names(conn: AsyncConnection, tables: LatticeTables, session_id: str) -> list[str]:
    """The session's live branches, oldest first."""
    b = advanced_tables(tables).branches
    query = (
        select(b.c.branch_id)
        .where(and_(b.c.session_id == session_id, b.c.state == BRANCH_ACTIVE))
        .order_by(b.c.created_at, b.c.branch_id)
    )
    return [r[0] for r in await conn.execute(query)]
