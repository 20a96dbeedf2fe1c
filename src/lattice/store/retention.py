"""Retention: deleting sessions one by one, by filter, or by age, in bounded batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .core import StoreCore
from .listing import WALK_CHUNK, Filters, walk
from .model import DeleteResult, decode_metadata

__all__ = ["DEFAULT_BATCH_ITEMS", "Progress", "delete_matching", "delete_one"]

#: Most items one retention transaction deletes (and so holds locks on).
#: 5,000 rows keep each transaction in the low milliseconds on all three
#: databases while the per-transaction overhead stays small.
DEFAULT_BATCH_ITEMS = 5000

Progress = Callable[[int], None]


@dataclass
class _Group:
    ids: list[str] = field(default_factory=list)
    items: int = 0


async def delete_matching(
    core: StoreCore, filters: Filters, batch_items: int, progress: Progress | None
) -> DeleteResult:
    """Delete the sessions ``filters`` match, in transactions of at most ``batch_items`` items."""
    total = DeleteResult()
    group = _Group()

    async def flush() -> None:
        if group.ids:
            done = await _delete_group(core, group.ids, filters)
            total.add(done)
            if progress is not None:
                progress(done.sessions)
            group.ids, group.items = [], 0

    # Oldest first: the order purge wants, and an index range on updated_at.
    async for info in walk(core, filters, newest_first=False):
        if info.item_count > batch_items:
            done = await delete_one(core, info.session_id, filters, batch_items)
            total.add(done)
            if progress is not None:
                progress(done.sessions)
            continue
        if group.items + info.item_count > batch_items or len(group.ids) >= WALK_CHUNK:
            await flush()
        group.ids.append(info.session_id)
        group.items += info.item_count
    await flush()
    return total


async def _delete_group(core: StoreCore, ids: list[str], filters: Filters) -> DeleteResult:
    """Delete the sessions of ``ids`` that still match, in one transaction."""
    s, m = core.tables.sessions, core.tables.messages

    async def body(conn: AsyncConnection) -> DeleteResult:
        await core.lock(conn, ids)
        query = select(s.c.session_id, s.c.session_metadata).where(
            s.c.session_id.in_(ids), *filters.where(core.tables, conn.dialect)
        )
        rows = (await conn.execute(query)).all()
        doomed = [r[0] for r in rows if filters.matches_metadata(decode_metadata(r[1]))]
        if not doomed:
            return DeleteResult()
        items = await conn.execute(delete(m).where(m.c.session_id.in_(doomed)))
        sessions = await conn.execute(delete(s).where(s.c.session_id.in_(doomed)))
        await core.journal_deletes(conn, doomed)
        return DeleteResult(int(sessions.rowcount), int(items.rowcount))

    return await core.transact(body)


async def delete_one(
    core: StoreCore, session_id: str, filters: Filters, batch_items: int
) -> DeleteResult:
    """Delete one session in transactions of at most ``batch_items`` items."""
    s, m = core.tables.sessions, core.tables.messages
    this = s.c.session_id == session_id
    its_items = m.c.session_id == session_id

    async def step(conn: AsyncConnection) -> tuple[DeleteResult, bool]:
        if not await core.lock(conn, [session_id]):
            return DeleteResult(), True
        query = select(s.c.session_metadata).where(this, *filters.where(core.tables, conn.dialect))
        rows = (await conn.execute(query)).all()
        if not rows or not filters.matches_metadata(decode_metadata(rows[0][0])):
            return DeleteResult(), True  # it stopped matching: keep the rest
        edge = (
            await conn.execute(
                select(m.c.id).where(its_items).order_by(m.c.id).offset(batch_items - 1).limit(1)
            )
        ).scalar()
        if edge is None:
            items = await conn.execute(delete(m).where(its_items))
            await conn.execute(delete(s).where(this))
            await core.journal_deletes(conn, [session_id])
            return DeleteResult(1, int(items.rowcount)), True
        items = await conn.execute(delete(m).where(its_items, m.c.id <= edge))
        await conn.execute(update(s).where(this).values(item_count=s.c.item_count - items.rowcount))
        return DeleteResult(0, int(items.rowcount)), False

    total = DeleteResult()
    finished = False
    while not finished:
        done, finished = await core.transact(step)
        total.add(done)
    return total
