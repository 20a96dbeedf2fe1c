"""The tables, and the portable column types they are made of.

This module is the source of truth for the schema: ``create_tables=True``
builds it with ``MetaData.create_all`` and the Alembic revisions in
``migrations/`` must produce the same thing (a test compares them).

Tables (names as the OpenAI Agents SDK has them, so its databases can be
adopted in place):

``agent_sessions``
    One row per session: the id, when it was created and last written, how many
    items it holds, and ``write_tokens``, the tokens of its last few committed
    writes (used to learn whether a write whose COMMIT reply was lost did
    commit; see ``sqlalchemy_session``). It is also the catalogue
    :class:`lattice.SessionStore` lists: ``session_metadata`` holds the
    application's JSON metadata (text, like the items) and ``owner`` a copy of
    its ``"owner"`` key, so listing, counting and deleting by owner use an
    index. ``(updated_at, session_id)`` orders sessions by last activity for
    keyset pagination and retention.
``agent_messages``
    One row per item, ordered by ``id``, a 64-bit key that only grows. The
    index ``(session_id, id)`` serves both "the latest N of a session" and
    "the newest one" in O(log n + N) however many rows the table holds.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine

from .items import MAX_SESSION_ID_LENGTH

__all__ = [
    "DEFAULT_MESSAGES_TABLE",
    "DEFAULT_SESSIONS_TABLE",
    "MAX_SESSION_ID_LENGTH",
    "METADATA_MAX_BYTES",
    "WRITE_TOKENS_KEPT",
    "WRITE_TOKEN_LENGTH",
    "LatticeTables",
    "SessionId",
    "UtcDateTime",
    "is_mysql",
    "lattice_tables",
    "metadata",
    "utc_now",
]

DEFAULT_SESSIONS_TABLE = "agent_sessions"
DEFAULT_MESSAGES_TABLE = "agent_messages"
#: Each write's token is 32 hex characters; a session row keeps the last 8.
WRITE_TOKEN_LENGTH = 32
WRITE_TOKENS_KEPT = 8
#: Session metadata is JSON text of at most 65,535 bytes (a MySQL ``TEXT``).
METADATA_MAX_BYTES = 65535

_MYSQL = ("mysql", "mariadb")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


def is_mysql(dialect: Dialect) -> bool:
    """True for MySQL and MariaDB (SQLAlchemy names either dialect ``mysql``).

    The one place the project asks; everything else reads the attributes of
    :func:`lattice.dialects.rules`.
    """
    return dialect.name in _MYSQL


class SessionId(TypeDecorator[str]):
    """A session id of up to 255 characters, compared byte for byte everywhere.

    PostgreSQL and SQLite compare ``VARCHAR`` exactly. MySQL and MariaDB do not:
    their ``utf8mb4`` collations fold case, and the ``_bin`` ones still ignore
    trailing spaces (PAD SPACE). The only choice that both MySQL 8 and MariaDB
    compare exactly is a binary string, so there the id is stored as its UTF-8
    bytes in ``VARBINARY(1020)`` (255 characters of at most 4 bytes).
    """

    impl = String(MAX_SESSION_ID_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if is_mysql(dialect):
            return dialect.type_descriptor(mysql.VARBINARY(4 * MAX_SESSION_ID_LENGTH))
        return dialect.type_descriptor(String(MAX_SESSION_ID_LENGTH))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        if value is not None and is_mysql(dialect):
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8")
        return value  # type: ignore[no-any-return]


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp with microseconds, always returned as an aware UTC datetime.

    ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL, ``DATETIME(6)`` holding UTC on
    MySQL, ISO text on SQLite.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if is_mysql(dialect):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(dt.timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(dt.timezone.utc)  # type: ignore[no-any-return]


class CurrentTimestamp(FunctionElement[dt.datetime]):
    """``CURRENT_TIMESTAMP`` with the column's precision (MySQL insists they match)."""

    type = DateTime()
    inherit_cache = True
    name = "current_timestamp"


@compiles(CurrentTimestamp)
def _current_timestamp(element: CurrentTimestamp, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(CurrentTimestamp, "mysql")
@compiles(CurrentTimestamp, "mariadb")
def _current_timestamp_mysql(element: CurrentTimestamp, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP(6)"


def utc_now() -> dt.datetime:
    """The current time as an aware UTC datetime (what Lattice writes)."""
    return dt.datetime.now(dt.timezone.utc)


_PAYLOAD = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# SQLite only treats ``INTEGER PRIMARY KEY`` as the rowid; BIGINT elsewhere.
_ORDER_KEY = BigInteger().with_variant(Integer(), "sqlite")
# utf8mb4 so the payload holds any Unicode text; a binary collation so nothing
# on the server ever folds or reorders ids or payloads.
_MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


@dataclass(frozen=True)
class LatticeTables:
    """The two tables of one naming, on their own ``MetaData``."""

    metadata: MetaData
    sessions: Table
    messages: Table


def _check_table_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ValueError(
            f"{what} must be an identifier of letters, digits and underscores "
            f"(at most 48 characters, not starting with a digit), not {name!r}"
        )


@lru_cache(maxsize=64)
def lattice_tables(
    sessions_table: str = DEFAULT_SESSIONS_TABLE,
    messages_table: str = DEFAULT_MESSAGES_TABLE,
) -> LatticeTables:
    """Return the tables for the given names (built once per pair of names)."""
    _check_table_name(sessions_table, "sessions_table")
    _check_table_name(messages_table, "messages_table")
    if sessions_table == messages_table:
        raise ValueError("sessions_table and messages_table must differ")
    meta = MetaData()
    sessions = Table(
        sessions_table,
        meta,
        Column("session_id", SessionId(), primary_key=True),
        Column("created_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        Column("updated_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        Column("item_count", BigInteger(), nullable=False, server_default="0"),
        Column(
            "write_tokens",
            String(WRITE_TOKEN_LENGTH * WRITE_TOKENS_KEPT),
            nullable=False,
            server_default="",
        ),
        # The application's metadata as JSON text (NULL: none), and its
        # "owner" key copied out where an index can use it. The owner is
        # compared exactly, like an id (binary on MySQL).
        Column("session_metadata", Text(), nullable=True),
        Column("owner", SessionId(), nullable=True),
        # Newest activity first, with the id as tie-breaker: the keyset of
        # SessionStore.list_sessions and the range purge() deletes by.
        Index(f"ix_{sessions_table}_updated_at", "updated_at", "session_id"),
        Index(f"ix_{sessions_table}_owner", "owner", "updated_at", "session_id"),
        **_MYSQL_TABLE_OPTIONS,
    )
    messages = Table(
        messages_table,
        meta,
        Column("id", _ORDER_KEY, primary_key=True, autoincrement=True),
        Column(
            "session_id",
            SessionId(),
            ForeignKey(
                f"{sessions_table}.session_id",
                ondelete="CASCADE",
                name=f"fk_{messages_table}_session_id",
            ),
            nullable=False,
        ),
        Column("message_data", _PAYLOAD, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        Index(f"ix_{messages_table}_session_id_id", "session_id", "id"),
        sqlite_autoincrement=True,
        **_MYSQL_TABLE_OPTIONS,
    )
    return LatticeTables(meta, sessions, messages)


#: The default tables' ``MetaData``: what migrations and autogenerate compare against.
metadata = lattice_tables().metadata
