"""What `lattice sessions show` reads of an advanced session: its branches and items."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DBAPIError

from ..store import SessionStore
from ._common import fail

__all__ = ["SHOWN_KEYS", "branches_and_items"]

#: The keys of each branch that ``show`` prints.
SHOWN_KEYS = ("branch_id", "message_count", "user_turns", "created_at")


async def branches_and_items(
    store: SessionStore, session_id: str, branch: str | None, items: int
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The session's branches, and its latest ``items`` items (of ``branch``, else ``main``).

    A session without branches is shown as a plain session; so is every
    session of a database from before advanced sessions (revision 0005).
    """
    try:
        branches = await store.list_branches(session_id)
    except DBAPIError:
        if branch is not None:
            raise
        branches = []
    if branch is not None and branch not in [b["branch_id"] for b in branches]:
        raise fail(f"session {session_id!r} has no branch {branch!r}")
    if not items:
        return branches, []
    if not branches:
        return branches, await store.session(session_id).get_items(limit=items)
    advanced = store.advanced_session(session_id)
    return branches, await advanced.get_items(limit=items, branch_id=branch or "main")
