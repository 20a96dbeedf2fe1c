"""Branch, usage and replacement writes of advanced sessions (see :mod:`lattice.advanced.ops`)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import and_, insert, select, update

from ..drivers import Stmt
from ..items import decode_item, encode_items
from ..schema import JOURNAL_CLEAR, WRITE_TOKEN_LENGTH, utc_now
from ..schema_advanced import BRANCH_ACTIVE, BRANCH_DELETED
from .ops import (
    Tx,
    _decoded,
    append_rows,
    branch_row,
    journal,
    lock,
    remove_items,
    take_newest,
    writable_branch,
)
from .tables import branch_messages

if TYPE_CHECKING:
    from .session import AdvancedSQLAlchemySession

__all__ = ["create", "delete", "replace", "snapshot", "store_usage", "usage_values"]


async def create(tx: Tx, source: str, turn: int, name: str | None) -> tuple[str, str, Any]:
    """Make a branch holding ``source``'s turns before ``turn``: ``(name, source, content)``.

    Copies ``source``'s segments that start before the turn's user message,
    the last one clipped just before it: one row per segment, no item body.

    Raises:
        ValueError: the turn has no user message, or ``name`` was used before.
    """
    await lock(tx)
    await journal(tx)
    source, _ = await writable_branch(tx, source)
    t = tx.t
    m, s, st = t.messages, t.segments, t.structure
    opener = (
        await tx.execute(
            branch_messages(t, m.c.id, m.c.message_data)
            .where(
                s.c.session_id == tx.sid,
                s.c.branch_id == source,
                st.c.turn == turn,
                st.c.message_type == "user",
            )
            .order_by(m.c.id)
            .limit(1)
        )
    ).first()
    if opener is None:
        raise ValueError(f"Turn {turn} does not contain a user message in branch '{source}'")
    cut = int(opener[0])
    name = await _reserve(tx, name, turn)
    await tx.execute(
        insert(t.branches).values(
            session_id=tx.sid,
            branch_id=name,
            parent_branch_id=source,
            from_turn=turn,
            state=BRANCH_ACTIVE,
            last_turn=turn - 1,
            created_at=utc_now(),
        )
    )
    ranges = (
        await tx.execute(
            select(s.c.first_id, s.c.last_id)
            .where(s.c.session_id == tx.sid, s.c.branch_id == source, s.c.first_id < cut)
            .order_by(s.c.first_id)
        )
    ).all()
    if ranges:
        await tx.execute(
            insert(s),
            [
                {
                    "session_id": tx.sid,
                    "branch_id": name,
                    "first_id": int(first),
                    "last_id": min(int(last), cut - 1),
                }
                for first, last in ranges
            ],
        )
    content = _decoded(str(opener[1]))
    return name, source, content.get("content", "") if isinstance(content, dict) else ""


async def _reserve(tx: Tx, name: str | None, turn: int) -> str:
    """``name`` if no branch of the session ever had it, else an error; or a fresh name."""
    if name is not None:
        if await branch_row(tx, name) is not None:
            raise ValueError(f"Branch ID '{name}' has already been used. Choose a new branch ID.")
        return name
    base = f"branch_from_turn_{turn}_{int(time.time())}"
    candidate, suffix = base, 1
    while await branch_row(tx, candidate) is not None:
        suffix += 1
        candidate = f"{base}_{suffix}"
    return candidate


async def delete(tx: Tx, branch: str) -> None:
    """Delete a branch's items (those no other branch holds) and usage; its id stays used.

    Raises:
        ValueError: the branch does not exist (or was deleted already).
    """
    await lock(tx)
    await journal(tx)
    found = await branch_row(tx, branch)
    if found is None or found[0] != BRANCH_ACTIVE:
        raise ValueError(f"Branch '{branch}' does not exist")
    await remove_items(tx, branch)
    b = tx.t.branches
    await tx.execute(
        update(b)
        .where(b.c.session_id == tx.sid, b.c.branch_id == branch)
        .values(state=BRANCH_DELETED)
    )


async def store_usage(
    tx: Tx, branch: str, turn: int | None, anchor: int | None, values: dict[str, Any]
) -> bool:
    """Record a run's usage on its turn; replaces that turn's row. False when the turn is gone.

    The row carries the run's key: a retry for the same run finds it and
    writes nothing (the transaction rolls back, the journal unchanged).

    ``turn``/``anchor`` (the id of the turn's user message) say which turn
    the run wrote; without them, the branch's newest turn. A turn that was
    popped or deleted since gets nothing, even if a new turn has its number.
    """
    await lock(tx)
    await journal(tx)
    found = await branch_row(tx, branch)
    if found is None or found[0] != BRANCH_ACTIVE:
        await tx.run.rollback()
        return False
    t = tx.t
    m, s, st, u = t.messages, t.segments, t.structure, t.usage
    mine = and_(s.c.session_id == tx.sid, s.c.branch_id == branch)
    if turn is None:
        turn = found[1]
        probe = branch_messages(t, m.c.id).where(mine, st.c.turn == turn).limit(1)
    else:
        probe = branch_messages(t, m.c.id).where(mine, m.c.id == anchor, st.c.turn == turn)
    if (await tx.execute(probe)).first() is None:
        await tx.run.rollback()
        return False
    key = and_(u.c.session_id == tx.sid, u.c.branch_id == branch, u.c.turn == turn)
    # Check, then write: safe here, as every writer of this session holds its row lock.
    existing = (await tx.execute(select(u.c.run_key).where(key))).first()
    if existing is None:
        await tx.execute(
            insert(u).values(
                session_id=tx.sid, branch_id=branch, turn=turn, created_at=utc_now(), **values
            )
        )
    elif existing[0] == values["run_key"]:
        await tx.run.rollback()  # this run's usage is there already: a retry writes nothing
    else:
        await tx.execute(update(u).where(key).values(**values))
    return True


def usage_values(usage: Any, run_key: str) -> dict[str, Any]:
    """The columns of a usage row for an Agents SDK ``Usage``."""
    return {
        "requests": int(usage.requests or 0),
        "input_tokens": int(usage.input_tokens or 0),
        "output_tokens": int(usage.output_tokens or 0),
        "total_tokens": int(usage.total_tokens or 0),
        "input_tokens_details": _details(getattr(usage, "input_tokens_details", None)),
        "output_tokens_details": _details(getattr(usage, "output_tokens_details", None)),
        "run_key": run_key,
    }


def _details(details: Any) -> str | None:
    if not details:
        return None
    dump = getattr(details, "model_dump", None)
    data = dump() if callable(dump) else dict(vars(details))
    return json.dumps(data, allow_nan=False)


async def replace(tx: Tx, branch: str, items: list[Any], texts: list[str]) -> str:
    """Replace ``branch``'s items with ``items``; the branch written (``main`` after a clear).

    Recorded in the journal as a clear, so a put-back of an earlier pop does
    not bring an item back into the new history.
    """
    await lock(tx, len(texts))
    await journal(tx, JOURNAL_CLEAR)
    branch, _ = await writable_branch(tx, branch)
    await remove_items(tx, branch)
    if texts:
        await append_rows(tx, branch, 0, items, texts)
    return branch


async def snapshot(session: AdvancedSQLAlchemySession, limit: int) -> Any:
    """The SDK's compaction snapshot of the current branch's latest ``limit`` items.

    Its ``replace_suffix(start, output)`` swaps ``items[start:]`` for
    ``output`` in one transaction, only if nothing was written to the
    session since the snapshot (the newest write token is unchanged).
    """
    from agents.memory.session import _CompactionSnapshot

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return None
    bound, t = await session._bound_advanced()
    sid, branch = session.session_id, session.current_branch_id
    async with (
        bound.state.exclusive(),
        bound.driver.transaction(bound.engine, bound.state, bound.tables) as run,
    ):
        ring = await run.rows(Stmt.READ_TOKENS, {"sid": sid})
        conn = cast("Any", run).connection
        m, s = t.messages, t.segments
        rows = (
            await conn.execute(
                branch_messages(t, m.c.message_data)
                .where(s.c.session_id == sid, s.c.branch_id == branch)
                .order_by(m.c.id.desc())
                .limit(limit + 1)
            )
        ).all()
    seen = str(ring[0][0])[:WRITE_TOKEN_LENGTH] if ring else None
    texts = [row[0] for row in reversed(rows)][-limit:]
    try:
        items = [decode_item(text) for text in texts]
    except ValueError:
        return None
    complete = len(rows) <= limit

    async def replace_suffix(start: int, output: list[Any]) -> bool:
        drop = len(texts) - start
        if drop <= 0 or start < 0:
            return False
        new = encode_items(output, session._max_item_bytes)

        async def body(tx: Tx) -> bool:
            await lock(tx, len(new))
            ring = await tx.run.rows(Stmt.READ_TOKENS, {"sid": sid})
            before = str(ring[0][0])[WRITE_TOKEN_LENGTH : 2 * WRITE_TOKEN_LENGTH] if ring else ""
            if seen is None or before != seen:
                await tx.run.rollback()
                return False
            await journal(tx, JOURNAL_CLEAR)
            target, last_turn = await writable_branch(tx, branch)
            for _ in range(drop):
                popped = await take_newest(tx, target)
                if popped is not None and popped.message_type == "user":
                    last_turn = popped.turn - 1
            if new:
                await append_rows(tx, target, last_turn, list(output), new)
            return True

        return await session._write(body)

    return _CompactionSnapshot(cast("Any", items), complete, replace_suffix)
