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

The partitioned variant (``lattice db upgrade --partitions N``, PostgreSQL
only; see ``lattice._partitioning``) differs in the messages table alone: it
is ``PARTITION BY HASH (session_id)``, its primary key is ``(session_id,
id)`` (PostgreSQL requires the partition key in every unique constraint) and
that key's index replaces ``(session_id, id)``. ``id`` is still one
``BIGSERIAL`` sequence shared by every partition. Sessions use the same
statements on either layout (``lattice_tables(..., partitioned=True)`` is
what migrations compare a partitioned database with).
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import SchemaItem
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine

from .items import MAX_SESSION_ID_LENGTH

__all__ = [
    "DEFAULT_MESSAGES_TABLE",
    "DEFAULT_SESSIONS_TABLE",
    "JOURNAL_CLEAR",
    "JOURNAL_DELETE",
    "JOURNAL_WRITE",
    "MAX_SESSION_ID_LENGTH",
    "METADATA_MAX_BYTES",
    "WRITE_TOKENS_KEPT",
    "WRITE_TOKEN_LENGTH",
    "EpochMillis",
    "LatticeTables",
    "SessionId",
    "UtcDateTime",
    "is_mysql",
    "journal_table_name",
    "lattice_tables",
    "metadata",
    "object_name",
    "partitioned_metadata",
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


class _VarBinaryText(mysql.VARBINARY):
    """MySQL's ``VARBINARY`` that binds a Python ``str`` as it is (see :class:`SessionId`)."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None


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
            return dialect.type_descriptor(_VarBinaryText(4 * MAX_SESSION_ID_LENGTH))
        return dialect.type_descriptor(String(MAX_SESSION_ID_LENGTH))

    # Bound as text on every database, MySQL included: the server stores a
    # utf8mb4 string in a VARBINARY column as its UTF-8 bytes and compares
    # binary against text byte for byte. Not as bytes: the MySQL drivers
    # (aiomysql, asyncmy) escape a bytes value with backslashes whatever the
    # session's sql_mode, so under NO_BACKSLASH_ESCAPES an id like
    # "' OR 1=1 -- " would end its literal early; their text escaping follows
    # the server's flag (tests/test_hostile_conditions.py).

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


class EpochMillis(FunctionElement[int]):
    """The database server's clock as milliseconds since 1970 (the journal's time).

    The server's clock, not the application's: every process prunes the
    write journal by the same clock, whatever their own clocks say.
    """

    type = BigInteger()
    inherit_cache = True
    name = "epoch_millis"


@compiles(EpochMillis, "sqlite")
def _epoch_millis_sqlite(element: EpochMillis, compiler: SQLCompiler, **kw: Any) -> str:
    return "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


@compiles(EpochMillis, "postgresql")
def _epoch_millis_postgresql(element: EpochMillis, compiler: SQLCompiler, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"


@compiles(EpochMillis, "mysql")
@compiles(EpochMillis, "mariadb")
def _epoch_millis_mysql(element: EpochMillis, compiler: SQLCompiler, **kw: Any) -> str:
    return "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"


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
    """The tables of one naming, on their own ``MetaData``."""

    metadata: MetaData
    sessions: Table
    messages: Table
    journal: Table


#: The kinds of write the journal records.
JOURNAL_WRITE = "w"
JOURNAL_CLEAR = "c"
JOURNAL_DELETE = "d"

# PostgreSQL's identifiers stop at 63 bytes, MySQL's at 64.
_MAX_NAME = 63


def object_name(prefix: str, table: str, suffix: str) -> str:
    """An index or constraint name ``prefix_table_suffix`` that fits every database.

    Names that fit are the plain ones (so existing databases keep theirs); a
    longer one keeps its start and ends with a hash of the whole, so two long
    table names never share an index name.
    """
    name = f"{prefix}_{table}_{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11]}_{digest}"


def journal_table_name(sessions_table: str) -> str:
    """The write journal's table for ``sessions_table`` (``agent_sessions_journal``)."""
    return f"{sessions_table}_journal"


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
    *,
    partitioned: bool = False,
) -> LatticeTables:
    """Return the tables for the given names (built once per pair of names).

    ``partitioned``: the PostgreSQL layout hash-partitioned by session (see
    the module doc); the partitions themselves are not in the ``MetaData``.
    """
    _check_table_name(sessions_table, "sessions_table")
    _check_table_name(messages_table, "messages_table")
    if messages_table in (sessions_table, journal_table_name(sessions_table)):
        raise ValueError("sessions_table, messages_table and the journal table must differ")
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
        Index(object_name("ix", sessions_table, "updated_at"), "updated_at", "session_id"),
        Index(object_name("ix", sessions_table, "owner"), "owner", "updated_at", "session_id"),
        **_MYSQL_TABLE_OPTIONS,
    )
    # Unpartitioned: ``id`` alone is the key and (session_id, id) an index.
    # Partitioned: (session_id, id) is the key, whose index serves the same reads.
    keys: list[SchemaItem] = (
        [PrimaryKeyConstraint("session_id", "id", name=f"{messages_table}_pkey")]
        if partitioned
        else [Index(object_name("ix", messages_table, "session_id_id"), "session_id", "id")]
    )
    partitioning: dict[str, Any] = (
        {"postgresql_partition_by": "HASH (session_id)"} if partitioned else {}
    )
    messages = Table(
        messages_table,
        meta,
        Column("id", _ORDER_KEY, primary_key=not partitioned, autoincrement=True),
        Column(
            "session_id",
            SessionId(),
            ForeignKey(
                f"{sessions_table}.session_id",
                ondelete="CASCADE",
                name=object_name("fk", messages_table, "session_id"),
            ),
            nullable=False,
        ),
        Column("message_data", _PAYLOAD, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        *keys,
        sqlite_autoincrement=True,
        **partitioning,
        **_MYSQL_TABLE_OPTIONS,
    )
    journal_name = journal_table_name(sessions_table)
    # The write journal: one row per committed write of a session, written in
    # the write's own transaction, kept for lattice.writes.JOURNAL_WINDOW_S
    # (pruned by the server's clock). It answers exactly whether a write
    # whose COMMIT reply was lost committed, and whether a session was
    # cleared or deleted after a pop (see lattice.writes). ``seq`` orders the
    # rows of one session as their writes held its row lock.
    journal = Table(
        journal_name,
        meta,
        Column("seq", _ORDER_KEY, primary_key=True, autoincrement=True),
        Column("token", String(WRITE_TOKEN_LENGTH), nullable=False),
        Column("session_id", SessionId(), nullable=False),
        Column("kind", String(1), nullable=False),
        Column("at_ms", BigInteger(), nullable=False),
        Index(object_name("ix", journal_name, "token"), "token", unique=True),
        Index(object_name("ix", journal_name, "session"), "session_id", "seq"),
        Index(object_name("ix", journal_name, "at"), "at_ms"),
        **_MYSQL_TABLE_OPTIONS,
    )
    return LatticeTables(meta, sessions, messages, journal)


#: The default tables' ``MetaData``: what migrations and autogenerate compare against.
metadata = lattice_tables().metadata
#: The same, for a database upgraded with ``--partitions`` (PostgreSQL).
partitioned_metadata = lattice_tables(partitioned=True).metadata
