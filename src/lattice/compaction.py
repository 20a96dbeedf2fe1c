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

"Unchanged" is checked on the session's write-token ring: every write pushes a
random token, so any write since the snapshot (an add, a pop, a clear) makes
the replacement refuse. That is stricter than comparing the suffix rows, and
never replaces history it has not seen. ``prune_prefix`` (the SDK's way to
also drop expired encrypted items before the suffix) is accepted and not
applied: such items stay, and readers skip them as before.

A replacement pushes a clear-marked token, so a cancelled ``pop_item`` whose
put-back runs later does not bring an item back into compacted history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .compat import ascii_texts
from .fastpath import Runner, Step
from .items import decode_item, encode_items
from .schema import utc_now

if TYPE_CHECKING:
    from agents.memory.session import _CompactionSnapshot

    from .protocol import InputItem
    from .sqlalchemy_session import SQLAlchemySession

__all__ = ["compaction_snapshot", "replace_all", "unchanged_behaviour"]


def _texts(session: SQLAlchemySession, items: Any) -> list[str]:
    """The items' stored texts, checked, in the session's format (``ensure_ascii``)."""
    texts = encode_items(items, session._max_item_bytes)
    return ascii_texts(items) if session._ensure_ascii else texts


def unchanged_behaviour(session: SQLAlchemySession) -> bool:
    """True unless a subclass changed how items are read or written.

    Such a subclass (one that transforms items, say) must supply its own
    hooks: the ones here work on the stored rows and would bypass it. The SDK
    applies the same rule to its own classes.
    """
    from .sqlalchemy_session import SQLAlchemySession

    kind = type(session)
    return all(
        getattr(kind, name) is getattr(SQLAlchemySession, name)
        for name in ("get_items", "add_items", "pop_item", "clear_session")
    )


async def replace_all(session: SQLAlchemySession, items: Any) -> None:
    """Replace the session's whole history with ``items``, in one transaction."""
    texts = _texts(session, items)
    session_id = session.session_id

    async def body(run: Runner, token: str) -> None:
        head = {"sid": session_id, "now": utc_now(), "token": token}
        await run.steps(
            [
                Step("count", "lock_session_clear", head),
                Step("count", "delete_all", {"sid": session_id}),
                # Makes the session row if there was none; item_count 0 + n.
                Step("count", "upsert_session", {**head, "n": len(texts)}),
                *_inserts(session_id, texts),
            ]
        )

    await session._mutate(lambda: session._write(body, clearing=True))


def _inserts(session_id: str, texts: list[str]) -> list[Step]:
    if not texts:
        return []
    now = utc_now()
    rows = [{"sid": session_id, "data": text, "now": now} for text in texts]
    return [Step("many", "insert_message", rows)]


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
    async with bound[2].exclusive(), session._transaction(bound) as run:
        ring = await run.rows("read_tokens", {"sid": session_id})
        rows = await run.rows("select_latest", {"sid": session_id, "lim": limit + 1})
    seen = ring[0][0] if ring else None
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
            await run.count("upsert_session", {**head, "n": len(new) - drop})
            ring = await run.rows("read_tokens", {"sid": session_id})
            # The ring as it was before this write (its oldest token may have
            # dropped off the end): the snapshot's, unless someone wrote since.
            before = ring[0][0][len(token) :] if ring else ""
            if seen is None or before != seen[: len(before)]:
                await run.rollback()
                return False
            for _ in range(drop):
                newest = await run.rows("select_newest", {"sid": session_id})
                await run.count("delete_by_id", {"mid": newest[0][0]})
            if new:
                rows = [{"sid": session_id, "data": text, "now": now} for text in new]
                await run.many("insert_message", rows)
            return True

        replaced: bool = await session._mutate(lambda: session._write(body, clearing=True))
        return replaced

    return _CompactionSnapshot(cast("list[InputItem]", items), complete, replace_suffix)
