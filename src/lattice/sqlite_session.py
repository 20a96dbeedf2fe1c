"""``SQLiteSession``: the embedded default, on the same code path as ``SQLAlchemySession``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from . import engines
from .items import DEFAULT_MAX_ITEM_BYTES
from .schema import DEFAULT_MESSAGES_TABLE, DEFAULT_SESSIONS_TABLE, lattice_tables
from .sdk_parity import check_sqlite_table_names
from .sqlalchemy_session import SQLAlchemySession

if TYPE_CHECKING:
    from .protocol import SessionSettings

__all__ = ["SQLiteSession"]


class SQLiteSession(SQLAlchemySession):
    """A session in a SQLite database file, or in memory.

    Args:
        session_id: The conversation's id.
        db_path: A file path, or ``":memory:"`` (the default). An in-memory
            database belongs to this one object: another ``SQLiteSession``,
            even with the same id, sees a different, empty database, and the
            data is gone when the object is. A file is shared: every session
            on it in the process uses one engine, the file runs in WAL mode
            with a busy timeout, and several objects or processes see each
            other's writes.
        sessions_table: Name of the sessions table (``"agent_sessions"``).
        messages_table: Name of the messages table (``"agent_messages"``).
        session_settings: Default read settings.
        max_item_bytes: Largest accepted item, in bytes of UTF-8 JSON.

    The positional order is the Agents SDK's. The tables are created on first use.
    """

    def __init__(
        self,
        session_id: str,
        db_path: str | os.PathLike[str] = ":memory:",
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        *,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        path = os.fspath(db_path)
        if not isinstance(path, str) or not path:
            raise ValueError("db_path must be a file path or ':memory:'")
        check_sqlite_table_names(sessions_table, messages_table)
        self._init(
            session_id,
            create_tables=True,
            tables=lattice_tables(sessions_table, messages_table),
            session_settings=session_settings,
            max_item_bytes=max_item_bytes,
        )
        self.db_path = path
        self.sessions_table = sessions_table
        self.messages_table = messages_table
        self._engine_kwargs = {}
        if path == ":memory:":
            self._url = URL.create("sqlite+aiosqlite", database=":memory:")
            self._fixed_engine = engines.make_engine(self._url)
            self._owns_engine = True
        else:
            self._url = URL.create("sqlite+aiosqlite", database=os.path.abspath(path))
            self._fixed_engine = None
            self._owns_engine = False
            self._engine_key = engines.shared_engine_key(self._url, {})
