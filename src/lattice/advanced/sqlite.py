"""``AdvancedSQLiteSession``: the Agents SDK's constructor over Lattice's advanced session."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ..items import DEFAULT_MAX_ITEM_BYTES
from ..schema import DEFAULT_MESSAGES_TABLE, DEFAULT_SESSIONS_TABLE
from ..sqlite_session import SQLiteSession
from .session import AdvancedSQLAlchemySession

if TYPE_CHECKING:
    from ..protocol import SessionSettings

__all__ = ["AdvancedSQLiteSession"]


class AdvancedSQLiteSession(AdvancedSQLAlchemySession, SQLiteSession):
    """Branches, turns, usage and search in a SQLite file or in memory.

    Args:
        session_id: The conversation's id.
        db_path: A file path, or ``":memory:"`` (private to this object).
        create_tables: Accepted for the SDK's signature. The tables are
            created on first use either way, as :class:`lattice.SQLiteSession`
            does (the SDK refuses a database without them instead).
        logger: Where branch events are logged (default ``lattice.advanced``).
        session_settings: Default read settings.
        sessions_table, messages_table, max_item_bytes: As for ``SQLiteSession``.
    """

    def __init__(
        self,
        *,
        session_id: str,
        db_path: str | os.PathLike[str] = ":memory:",
        create_tables: bool = False,
        logger: logging.Logger | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        if not isinstance(create_tables, bool):
            raise TypeError("create_tables must be a bool")
        SQLiteSession.__init__(
            self,
            session_id,
            db_path,
            sessions_table,
            messages_table,
            session_settings,
            max_item_bytes=max_item_bytes,
        )
        if logger is not None:
            self._logger = logger
