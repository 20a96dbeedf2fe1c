"""The writes of advanced sessions, each one transaction of the write protocol.

Every function runs inside :func:`lattice.writes.run_write` on the general
SQLAlchemy path (:class:`lattice.drivers.SQLAlchemyDriver`) and starts as a
plain session's write does: the session row first (its lock; SQLite's write
lock), then the write journal's row, so lost-COMMIT outcomes, exactly-once
pops and put-backs work as for plain sessions. Under that lock a session's
branches, segments and turn counters cannot change, which is what keeps a
branch copy, a deletion and an append from interleaving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import dialects
from ..drivers import Operations, Runner, Stmt
from ..items import decode_item
from ..schema import JOURNAL_CLEAR, JOURNAL_WRITE, utc_now
from ..schema_advanced import (
    BRANCH_ACTIVE,
    BRANCH_CLEARED,
    BRANCH_DELETED,
    MAIN_BRANCH,
    USAGE_VALUE_COLUMNS,
)
from . import classify
from .tables import Tables, latest_rows

__all__ = ["Appended", "BranchGoneError", "PoppedItem", "Tx"]


class BranchGoneError(ValueError):
    """The branch a write was aimed at was deleted: nothing was written."""


@dataclass
class Tx:
    """One write's transaction: the connection, the tables, the session and the token."""

    run: Runner
    conn: AsyncConnection
    t: Tables
    sid: str
    token: str
    ops: Operations

    async def execute(self, statement: Any, params: Any = None) -> Any:
        return await self.conn.execute(statement, params)

    async def scalar(self, statement: Any) -> Any:
        return (await self.conn.execute(statement)).scalar()


@dataclass(frozen=True)
class Appended:
    """Where an append went: the branch, and the first turn it opened (with its item's id)."""

    branch: str
    turn: int | None
    anchor: int | None


@dataclass(frozen=True)
class PoppedItem:
    """What a pop removed, enough to put it back exactly (its caller was cancelled)."""

    message_id: int
    text: str
    token: str
    branch: str
    kept: bool  # the message row stayed: another branch still holds it
    message_type: str
    turn: int
    tool: str | None
    usage: dict[str, Any] | None = field(default=None)


# -- the start of every write -------------------------------------------------------


async def lock(tx: Tx, n: int = 0) -> None:
    """Upsert the session row (count + ``n``, this write's token): its lock, taken first."""
    params = {"sid": tx.sid, "now": utc_now(), "n": n, "token": tx.token}
    await tx.run.count(Stmt.UPSERT_SESSION, params)


async def journal(tx: Tx, kind: str = JOURNAL_WRITE) -> None:
    await tx.run.count(Stmt.JOURNAL_WRITE, {"token": tx.token, "sid": tx.sid, "kind": kind})


async def _count(tx: Tx, delta: int) -> None:
    if delta:
        s = tx.t.sessions
        await tx.execute(
            update(s).where(s.c.session_id == tx.sid).values(item_count=s.c.item_count + delta)
        )


async def branch_row(tx: Tx, branch: str) -> tuple[str, int] | None:
    """``(state, last_turn)`` of a branch, or ``None`` if it was never made."""
    b = tx.t.branches
    row = (
        await tx.execute(
            select(b.c.state, b.c.last_turn).where(
                b.c.session_id == tx.sid, b.c.branch_id == branch
            )
        )
    ).first()
    return None if row is None else (str(row[0]), int(row[1]))


async def writable_branch(tx: Tx, branch: str) -> tuple[str, int]:
    """The branch a write goes to, and its last turn.

    ``main`` is made on first use (adopting a history plain sessions wrote).
    A branch removed by a clear falls back to ``main``, as in the Agents SDK.

    Raises:
        BranchGoneError: the branch was deleted, or never existed.
    """
    found = await branch_row(tx, branch)
    if found is not None and found[0] == BRANCH_ACTIVE:
        return branch, found[1]
    if branch == MAIN_BRANCH or (found is not None and found[0] == BRANCH_CLEARED):
        main = found if branch == MAIN_BRANCH else await branch_row(tx, MAIN_BRANCH)
        if main is None:
            return MAIN_BRANCH, await _make_main(tx)
        return MAIN_BRANCH, main[1]
    if found is not None and found[0] == BRANCH_DELETED:
        raise BranchGoneError(f"branch {branch!r} was deleted; switch to another branch")
    raise BranchGoneError(f"branch {branch!r} does not exist")


async def _make_main(tx: Tx) -> int:
    """Make the ``main`` branch, holding the items plain sessions stored; its last turn."""
    t = tx.t
    m = t.messages
    rows = (
        await tx.execute(
            select(m.c.id, m.c.message_data).where(m.c.session_id == tx.sid).order_by(m.c.id)
        )
    ).all()
    structure, last_turn = _structure(tx.sid, [(int(r[0]), _decoded(r[1])) for r in rows], 0)
    await tx.execute(
        insert(t.branches).values(
            session_id=tx.sid,
            branch_id=MAIN_BRANCH,
            state=BRANCH_ACTIVE,
            last_turn=last_turn,
            created_at=utc_now(),
        )
    )
    if rows:
        await tx.execute(insert(t.structure), structure)
        await _add_segment(tx, MAIN_BRANCH, int(rows[0][0]), int(rows[-1][0]))
    return last_turn


def _decoded(text: str) -> Any:
    try:
        return decode_item(text)
    except ValueError:
        return None


def _structure(
    sid: str, items: list[tuple[int, Any]], last_turn: int, continues: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Structure rows for ``(id, item)`` pairs continuing after ``last_turn``; the new last turn.

    Items before the batch's first user message belong to turn ``continues``
    when given (the turn their run opened), else to ``last_turn``.
    """
    rows = []
    turn = last_turn
    for message_id, item in items:
        if classify.is_user_message(item):
            turn += 1
        rows.append(
            {
                "message_id": message_id,
                "session_id": sid,
                "message_type": classify.message_type(item),
                "turn": continues if continues is not None and turn == last_turn else turn,
                "tool_name": classify.tool_name(item),
            }
        )
    return rows, turn


async def _add_segment(tx: Tx, branch: str, first: int, last: int) -> None:
    await tx.execute(
        insert(tx.t.segments).values(
            session_id=tx.sid, branch_id=branch, first_id=first, last_id=last
        )
    )


async def _set_last_turn(tx: Tx, branch: str, turn: int) -> None:
    b = tx.t.branches
    await tx.execute(
        update(b).where(b.c.session_id == tx.sid, b.c.branch_id == branch).values(last_turn=turn)
    )


# -- append ---------------------------------------------------------------------------


async def append(
    tx: Tx, branch: str, items: list[Any], texts: list[str], continues: int | None = None
) -> Appended:
    """Store ``items`` as one batch at the end of ``branch``: rows, structure, one segment.

    ``continues``: the turn a run opened, which this batch's leading
    non-user items belong to (another run may have opened a later turn since).
    """
    if tx.ops.rules.packet_limited:
        dialects.check_packet(texts, await tx.ops.max_packet(tx.run))
    await lock(tx, len(texts))
    await journal(tx)
    asked = branch
    branch, last_turn = await writable_branch(tx, branch)
    if branch != asked:
        continues = None
    return await append_rows(tx, branch, last_turn, items, texts, continues)


async def append_rows(
    tx: Tx,
    branch: str,
    last_turn: int,
    items: list[Any],
    texts: list[str],
    continues: int | None = None,
) -> Appended:
    """The rows of an append, once the session is locked and journalled."""
    now = utc_now()
    await tx.run.many(
        Stmt.INSERT_MESSAGE, [{"sid": tx.sid, "data": text, "now": now} for text in texts]
    )
    m = tx.t.messages
    # Under the session's lock the newest len(texts) rows of the session are this batch.
    newest = await tx.execute(
        select(m.c.id).where(m.c.session_id == tx.sid).order_by(m.c.id.desc()).limit(len(texts))
    )
    ids = sorted(int(row[0]) for row in newest)
    rows, turn = _structure(tx.sid, list(zip(ids, items, strict=True)), last_turn, continues)
    await tx.execute(insert(tx.t.structure), rows)
    await _add_segment(tx, branch, ids[0], ids[-1])
    if turn != last_turn:
        await _set_last_turn(tx, branch, turn)
    opened = next((row for row in rows if row["message_type"] == "user"), None)
    if opened is None:
        return Appended(branch, None, None)
    return Appended(branch, int(opened["turn"]), int(opened["message_id"]))


# -- pop and put-back -----------------------------------------------------------------


async def _covered_elsewhere(tx: Tx, branch: str, message_id: int) -> bool:
    s = tx.t.segments
    return bool(
        await tx.scalar(
            select(
                exists().where(
                    s.c.session_id == tx.sid,
                    s.c.branch_id != branch,
                    s.c.first_id <= message_id,
                    s.c.last_id >= message_id,
                )
            )
        )
    )


async def pop(tx: Tx, branch: str, check: Any = None) -> PoppedItem | None:
    """Remove the newest item of ``branch``; its message row too unless another branch holds it.

    ``check(text)`` runs before anything is removed; raising rolls back.
    Nothing to pop rolls back (no session row is left behind).
    """
    await lock(tx)
    await journal(tx)
    found = await branch_row(tx, branch)
    if found is not None and found[0] == BRANCH_CLEARED:
        branch, found = MAIN_BRANCH, await branch_row(tx, MAIN_BRANCH)
    if found is None and branch == MAIN_BRANCH:
        found = (BRANCH_ACTIVE, await _make_main(tx))  # a history plain sessions wrote
    if found is None or found[0] != BRANCH_ACTIVE:
        await tx.run.rollback()
        return None
    popped = await take_newest(tx, branch, check)
    if popped is None:
        await tx.run.rollback()
        return None
    tx.run.if_committed = popped
    return popped


async def take_newest(tx: Tx, branch: str, check: Any = None) -> PoppedItem | None:
    """Remove the newest item of ``branch`` (the session locked and journalled), if any."""
    t = tx.t
    m, st = t.messages, t.structure
    found = await latest_rows(
        tx.conn,
        t,
        tx.sid,
        branch,
        1,
        m.c.id,
        m.c.message_data,
        st.c.message_type,
        st.c.turn,
        st.c.tool_name,
    )
    if not found:
        return None
    first, newest = found[0]
    message_id, text = int(newest[0]), str(newest[1])
    kind, turn, tool = str(newest[2] or "other"), int(newest[3] or 0), newest[4]
    if check is not None:
        check(text)
    await _trim(tx, branch, first, message_id)
    kept = await _covered_elsewhere(tx, branch, message_id)
    if not kept:
        await tx.execute(delete(st).where(st.c.message_id == message_id))
        await tx.run.count(Stmt.DELETE_BY_ID, {"sid": tx.sid, "mid": message_id})
        await _count(tx, -1)
    usage = None
    if kind == "user":
        # The turn this item opened is empty now: the branch's last turn is
        # the one before, and the turn's usage goes (as in the SDK).
        await _set_last_turn(tx, branch, turn - 1)
        usage = await _take_usage(tx, branch, turn)
    return PoppedItem(message_id, text, tx.token, branch, kept, kind, turn, tool, usage)


async def _trim(tx: Tx, branch: str, first: int, message_id: int) -> None:
    """Take ``message_id``, the newest item, off the end of its segment ``first``."""
    s, m = tx.t.segments, tx.t.messages
    key = and_(s.c.session_id == tx.sid, s.c.branch_id == branch, s.c.first_id == first)
    previous = await tx.scalar(
        select(func.max(m.c.id)).where(
            m.c.session_id == tx.sid, m.c.id >= first, m.c.id < message_id
        )
    )
    if previous is None:
        await tx.execute(delete(s).where(key))
    else:
        await tx.execute(update(s).where(key).values(last_id=int(previous)))


_USAGE_COLUMNS = USAGE_VALUE_COLUMNS


async def _take_usage(tx: Tx, branch: str, turn: int) -> dict[str, Any] | None:
    u = tx.t.usage
    key = and_(u.c.session_id == tx.sid, u.c.branch_id == branch, u.c.turn == turn)
    row = (await tx.execute(select(*(u.c[c] for c in _USAGE_COLUMNS)).where(key))).first()
    if row is None:
        return None
    await tx.execute(delete(u).where(key))
    return dict(zip(_USAGE_COLUMNS, row, strict=True))


async def put_back(tx: Tx, popped: PoppedItem) -> bool:
    """Return a popped item to its branch, unless the session was erased or the branch gone since.

    As for plain sessions (:meth:`lattice.drivers.Operations.put_back`), the
    journal tells whether a clear committed after the pop.

    Raises:
        LookupError: the pop's journal row is gone (older than the journal's window).
    """
    await lock(tx)
    seq = await tx.run.rows(Stmt.JOURNAL_SEQ, {"token": popped.token})
    if not seq:
        raise LookupError("the pop's journal row is gone")
    erased = await tx.run.rows(Stmt.JOURNAL_ERASED_SINCE, {"sid": tx.sid, "seq": seq[0][0]})
    found = await branch_row(tx, popped.branch)
    if erased or found is None or found[0] != BRANCH_ACTIVE:
        await tx.run.rollback()
        return False
    await journal(tx)
    m = tx.t.messages
    present = await tx.scalar(
        select(exists().where(m.c.session_id == tx.sid, m.c.id == popped.message_id))
    )
    if not present:
        params = {"mid": popped.message_id, "sid": tx.sid, "data": popped.text, "now": utc_now()}
        await tx.run.count(Stmt.INSERT_MESSAGE_WITH_ID, params)
        await tx.execute(
            insert(tx.t.structure).values(
                message_id=popped.message_id,
                session_id=tx.sid,
                message_type=popped.message_type,
                turn=popped.turn,
                tool_name=popped.tool,
            )
        )
        await _count(tx, 1)
    await _add_segment(tx, popped.branch, popped.message_id, popped.message_id)
    if popped.message_type == "user" and popped.turn > found[1]:
        await _set_last_turn(tx, popped.branch, popped.turn)
    if popped.usage is not None:
        await tx.execute(
            insert(tx.t.usage).values(
                session_id=tx.sid, branch_id=popped.branch, turn=popped.turn, **popped.usage
            )
        )
    return True


# -- clear, branches ------------------------------------------------------------------


async def clear(tx: Tx) -> None:
    """Remove every item and all usage; every branch but ``main`` is gone (its id stays used)."""
    params = {"sid": tx.sid, "now": utc_now(), "token": tx.token}
    if not await tx.run.count(Stmt.LOCK_SESSION_CLEAR, params):
        await tx.run.rollback()
        return
    await journal(tx, JOURNAL_CLEAR)
    t = tx.t
    for table in (t.usage, t.segments, t.structure):
        await tx.execute(delete(table).where(table.c.session_id == tx.sid))
    await tx.run.count(Stmt.DELETE_ALL, {"sid": tx.sid})
    b = t.branches
    await tx.execute(
        update(b)
        .where(b.c.session_id == tx.sid, b.c.branch_id != MAIN_BRANCH, b.c.state == BRANCH_ACTIVE)
        .values(state=BRANCH_CLEARED)
    )
    await _set_last_turn(tx, MAIN_BRANCH, 0)


async def remove_items(tx: Tx, branch: str) -> None:
    """Take every item off ``branch``; delete the message rows no other branch holds."""
    t = tx.t
    s, m, st, u = t.segments, t.messages, t.structure, t.usage
    mine = and_(s.c.session_id == tx.sid, s.c.branch_id == branch)
    ranges = (await tx.execute(select(s.c.first_id, s.c.last_id).where(mine))).all()
    await tx.execute(delete(s).where(mine))
    await tx.execute(delete(u).where(u.c.session_id == tx.sid, u.c.branch_id == branch))
    other = s.alias("other")
    gone = 0
    for first, last in ranges:
        ids = [
            int(row[0])
            for row in await tx.execute(
                select(m.c.id).where(
                    m.c.session_id == tx.sid,
                    m.c.id >= first,
                    m.c.id <= last,
                    ~exists().where(
                        other.c.session_id == tx.sid,
                        other.c.first_id <= m.c.id,
                        other.c.last_id >= m.c.id,
                    ),
                )
            )
        ]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            await tx.execute(delete(st).where(st.c.message_id.in_(chunk)))
            await tx.execute(delete(m).where(m.c.session_id == tx.sid, m.c.id.in_(chunk)))
        gone += len(ids)
    await _count(tx, -gone)
    await _set_last_turn(tx, branch, 0)
