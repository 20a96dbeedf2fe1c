"""The queries advanced sessions share between writes and reads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, select

from ..schema import LatticeTables
from ..schema_advanced import AdvancedTables, advanced_tables

__all__ = ["Tables", "branch_messages"]


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
