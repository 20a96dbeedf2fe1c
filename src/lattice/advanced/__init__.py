"""Advanced sessions: conversation branches, turns, token and tool usage, search.

:class:`AdvancedSQLAlchemySession` (any backend) and
:class:`AdvancedSQLiteSession` (the Agents SDK's constructor). See
``docs/advanced.md``.
"""

from __future__ import annotations

from .session import AdvancedSQLAlchemySession
from .sqlite import AdvancedSQLiteSession

__all__ = ["AdvancedSQLAlchemySession", "AdvancedSQLiteSession"]
