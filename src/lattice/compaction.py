"""Atomic history replacement for the SQL sessions: the Agents SDK's compaction hooks.

``OpenAIResponsesCompactionSession`` (openai-agents 0.24) asks its underlying
session for two optional hooks, implemented here for
:class:`~lattice.SQLAlchemySession` (and so ``SQLiteSession`` and store
sessions):

``_get_compaction_snapshot(limit, *, prune_prefix=None)``
    The latest ``limit`` items, whether they are the whole history, and a
    ``replace_suffix(start, output)`` that swaps ``items[start:]`` for
    ``output`` in one transaction, only if the session is unchanged since the
    snapshot (else it returns ``False`` and changes nothing).
``_atomic_replace_items(items)``
    The whole history replaced by ``items`` in one transaction.

"Unchanged" is checked on the session row's newest write token: every write
pushes a random one, so any write since the snapshot (an add, a pop, a
clear) makes the replacement refuse. That is stricter than comparing the suffix rows, and
never replaces history it has not seen. ``prune_prefix`` (the SDK's way to
also drop expired encrypted items before the suffix) is accepted and not
applied: such items stay, and readers skip them as before.

A replacement is recorded in the write journal as a clear, so a cancelled
``pop_item`` whose put-back runs later does not bring an item back into
compacted history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import writes
from .drivers import Runner, Step, StepKind, Stmt
from .items import decode_item, encode_items
from .schema import JOURNAL_CLEAR, WRITE_TOKEN_LENGTH, utc_now
from .sdk_parity import ascii_texts

if TYPE_CHECKING:
    from agents.memory.session import _CompactionSnapshot

    from .protocol import InputItem
    from .sqlalchemy_session import SQLAlchemySession

__all__ = ["compaction_snapshot", "replace_all", "unchanged_behaviour"]


def _texts(session: SQLAlchemySession, items: Any) -> list[str]:
    """The items' stored texts, checked, in the session's format (``ensure_ascii``)."""
    texts = encode_items(items, session._max_item_bytes)
    return ascii_texts(items) if session._ensure_ascii else texts


def unchanged_behaviour(session: SQLAlchemySession, base: type[Any]) -> bool:
    """True unless a subclass changed how items are read or written.

    Such a subclass (one that transforms items, say) must supply its own
    hooks: the ones here work on the stored rows and would bypass it. The SDK
    applies the same rule to its own classes.
    """
    kind = type(session)
    return all(
        getattr(kind, name) is getattr(base, name)
        for name in ("get_items", "add_items", "pop_item", "clear_session")
    )


async def replace_all(session: SQLAlchemySession, items: Any) -> None:
    """Replace the session's whole history with ``items``, in one transaction."""
    texts = _texts(session, items)
    session_id = session.session_id
    bound = await session._bind()

    async def body(run: Runner, token: str) -> None:
        head = {"sid": session_id, "now": utc_now(), "token": token}
        await run.steps(
            [
                Step(StepKind.COUNT, Stmt.LOCK_SESSION_CLEAR, head),
                _journal_clear(session_id, token),
                Step(StepKind.COUNT, Stmt.DELETE_ALL, {"sid": session_id}),
                # Makes the session row if there was none; item_count 0 + n.
                Step(StepKind.COUNT, Stmt.UPSERT_SESSION, {**head, "n": len(texts)}),
                *_inserts(session_id, texts),
            ]
        )

    await writes.shielded(lambda: writes.run_write(bound, session_id, body))


def _journal_clear(session_id: str, token: str) -> Step:
    params = {"token": token, "sid": session_id, "kind": JOURNAL_CLEAR}
    return Step(StepKind.COUNT, Stmt.JOURNAL_WRITE, params)


def _inserts(session_id: str, texts: list[str]) -> list[Step]:
    if not texts:
        return []
    now = utc_now()
    rows = [{"sid": session_id, "data": text, "now": now} for text in texts]
    return [Step(StepKind.MANY, Stmt.INSERT_MESSAGE, rows)]


async def compaction_snapshot(
    session: SQLAlchemySession, limit: int, prune_prefix: Callable[[Any], bool] | None
) -> _CompactionSnapshot | None:
    """The SDK's compaction snapshot of the latest ``limit`` items (see the module doc)."""
    from agents.memory.session import _CompactionSnapshot

    del prune_prefix  # accepted, not applied (module doc)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return None
    session_id = session.session_id
    bound = await session._bind()
    async with bound.state.exclusive(), bound.driver.transaction(
        bound.engine, bound.state, bound.tables
    ) as run:
        ring = await run.rows(Stmt.READ_TOKENS, {"sid": session_id})
        rows = await run.rows(Stmt.SELECT_LATEST, {"sid": session_id, "lim": limit + 1})
    seen = str(ring[0][0])[:WRITE_TOKEN_LENGTH] if ring else None
    texts = [row[0] for row in reversed(rows)][-limit:]
    try:
        items = [decode_item(text) for text in texts]
    except ValueError:
        return None  # a row that is not JSON: no snapshot, as in the SDK
    complete = len(rows) <= limit

    async def replace_suffix(start: int, output: list[InputItem]) -> bool:
        drop = len(texts) - start
        if drop <= 0 or start < 0:
            return False
        new = _texts(session, output)

        async def body(run: Runner, token: str) -> bool:
            now = utc_now()
            head = {"sid": session_id, "now": now, "token": token}
            # Lock the row first (and take SQLite's write lock), then compare.
            await run.count(Stmt.UPSERT_SESSION, {**head, "n": len(new) - drop})
            ring = await run.rows(Stmt.READ_TOKENS, {"sid": session_id})
            # The newest token before this write's own: the snapshot's,
            # unless someone wrote since.
            before = str(ring[0][0])[WRITE_TOKEN_LENGTH : 2 * WRITE_TOKEN_LENGTH] if ring else ""
            if seen is None or before != seen:
                await run.rollback()
                return False
            entry = _journal_clear(session_id, token)
            await run.count(entry.stmt, entry.params)
            for _ in range(drop):
                newest = await run.rows(Stmt.SELECT_NEWEST, {"sid": session_id})
                await run.count(Stmt.DELETE_BY_ID, {"sid": session_id, "mid": newest[0][0]})
            if new:
                rows = [{"sid": session_id, "data": text, "now": now} for text in new]
                await run.many(Stmt.INSERT_MESSAGE, rows)
            return True

        replaced: bool = await writes.shielded(
            lambda: writes.run_write(bound, session_id, body)
        )
        return replaced

    return _CompactionSnapshot(cast("list[InputItem]", items), complete, replace_suffix)
