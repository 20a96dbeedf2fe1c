"""Every statement a session runs, built once per (tables, dialect).

Backends never write dialect SQL: they ask :func:`statements` for the
prepared statements of their tables and the engine's dialect, and execute
them with bound parameters. Building them once keeps table and statement
construction off the hot path and lets SQLAlchemy's compiled-statement cache
hit on every call.

The write path, and why it is safe under concurrency:

* Every mutation of a session starts by writing that session's row
  (``upsert_session`` for appends, ``lock_session_*`` for pops and clears).
  On PostgreSQL and MySQL that takes the row lock, so writers of one session
  run one after another and each batch lands contiguous and in commit order.
  On SQLite the first write takes the database's write lock, which does the
  same. An upsert (``ON CONFLICT`` / ``ON DUPLICATE KEY``) rather than
  check-then-insert means no failed statement on the common path and none of
  the gap-lock deadlocks MySQL gives check-then-insert.
* The same transaction writes a row of the write journal (``journal_write``)
  under that lock; after a lost COMMIT reply the session asks the journal
  (under the row lock) whether its transaction committed. The token is also
  pushed onto ``write_tokens``, whose newest token tells asyncpg's
  one-statement pop whether its snapshot is current.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Delete,
    Dialect,
    Insert,
    Select,
    Table,
    Text,
    Update,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ColumnElement, func

from .schema import (
    JOURNAL_CLEAR,
    JOURNAL_DELETE,
    WRITE_TOKEN_LENGTH,
    WRITE_TOKENS_KEPT,
    EpochMillis,
    LatticeTables,
    is_mysql,
)

__all__ = [
    "GALERA_DEFAULT_READS",
    "GALERA_PROBE",
    "GALERA_SYNC_READS",
    "Rules",
    "Statements",
    "check_packet",
    "galera_from",
    "is_lock_timeout",
    "is_transient_conflict",
    "lock_timeout_statement",
    "rules",
    "schema_problem",
    "statements",
]


class Rules:
    """What differs between databases, as attributes (one instance per dialect).

    Attributes:
        name: ``"sqlite"``, ``"postgresql"`` or ``"mysql"``.
        delete_returning: ``DELETE ... RETURNING`` is available and portable
            (PostgreSQL; SQLite from 3.35). MySQL 8 has none, and MariaDB's is
            MariaDB-only SQL, so MySQL pops SELECT, then DELETE by key.
        packet_limited: A statement may not exceed the server's
            ``max_allowed_packet`` (MySQL): an item over it is refused up front
            (:func:`check_packet`), never truncated by the server.
        prefix_in_bytes: ``substr()`` on a session id counts bytes, not
            characters (MySQL, where ids are binary strings).
        connection_charset: The character set every connection must use, or
            ``None``. On MySQL, utf8mb4: the drivers escape values for the
            server, and under a multi-byte charset such as gbk or sjis an
            escaping backslash can become part of a character (the classic
            injection), so another charset is refused before any statement.
        export_isolation: The isolation level that gives an export one
            snapshot across its statements, or ``None`` where the driver cannot
            hold one (SQLite reads each chunk at the latest commit).
    """

    name = "generic"
    connection_charset: str | None = None
    packet_limited = False
    prefix_in_bytes = False
    export_isolation: str | None = "REPEATABLE READ"

    def __init__(self, dialect: Dialect) -> None:
        self.delete_returning = bool(dialect.delete_returning)

    def prefix_length(self, prefix: str) -> int:
        """The length ``substr()`` must cut to compare an id's start with ``prefix``."""
        return len(prefix.encode("utf-8")) if self.prefix_in_bytes else len(prefix)


class _SQLiteRules(Rules):
    name = "sqlite"
    export_isolation = None


class _PostgreSQLRules(Rules):
    name = "postgresql"


class _MySQLRules(Rules):
    name = "mysql"
    connection_charset = "utf8mb4"
    packet_limited = True
    prefix_in_bytes = True

    def __init__(self, dialect: Dialect) -> None:
        super().__init__(dialect)
        self.delete_returning = False


def _rules_class(dialect: Dialect) -> type[Rules]:
    if is_mysql(dialect):
        return _MySQLRules
    if dialect.name == "postgresql":
        return _PostgreSQLRules
    if dialect.name == "sqlite":
        return _SQLiteRules
    raise NotImplementedError(
        f"Lattice supports SQLite, PostgreSQL and MySQL/MariaDB, not {dialect.name!r}"
    )


_RULES: weakref.WeakKeyDictionary[Dialect, Rules] = weakref.WeakKeyDictionary()


def rules(dialect: Dialect) -> Rules:
    """The :class:`Rules` of ``dialect`` (one instance per dialect object)."""
    found = _RULES.get(dialect)
    if found is None:
        found = _RULES[dialect] = _rules_class(dialect)(dialect)
    return found


def check_packet(texts: list[str], max_packet: int) -> None:
    """Refuse an item that MySQL would not accept in one statement.

    The statement around the item needs a little room of its own (1 KiB).
    The item travels as an escaped string literal, where each ``\\``, ``"``
    and ``'`` takes two bytes: a 12 MB item of quotes is 24 MB on the wire,
    and a server that gets more than ``max_allowed_packet`` drops the
    connection (tests/test_hostile.py), so what is really sent is counted.

    Raises:
        ValueError: naming the item's index and the server setting.
    """
    for index, text in enumerate(texts):
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if 2 * size + 1024 <= max_packet:
            continue
        size += text.count("\\") + text.count('"') + text.count("'")
        if size + 1024 > max_packet:
            raise ValueError(
                f"item {index} is {size} bytes of escaped JSON, more than this MySQL server "
                f"accepts in one statement (max_allowed_packet = {max_packet}); raise "
                "max_allowed_packet on the server or store smaller items"
            )


@dataclass(frozen=True)
class Statements:
    """The prepared statements of one pair of tables on one dialect.

    Bound parameter names: ``sid`` (session id), ``now`` (UTC datetime),
    ``n`` (item count delta), ``token`` (write token), ``data`` (item JSON),
    ``lim`` (row limit), ``mid`` (message id).
    """

    upsert_session: Insert
    lock_session_clear: Update
    lock_session_pop: Update
    insert_message: Insert
    insert_message_with_id: Insert
    select_all: Select[Any]
    select_latest: Select[Any]
    select_newest: Select[Any]
    delete_newest_returning: Any  # a DELETE ... RETURNING, or None
    delete_by_id: Delete
    delete_all: Delete
    read_tokens: Select[Any]
    journal_write: Insert
    journal_seq: Select[Any]
    journal_erased_since: Select[Any]
    journal_prune: Delete


def _pushed_tokens(current: ColumnElement[str]) -> ColumnElement[str]:
    """``write_tokens`` with this write's token in front, oldest dropped."""
    kept = WRITE_TOKEN_LENGTH * (WRITE_TOKENS_KEPT - 1)
    # String concatenation compiles to || on PostgreSQL/SQLite and concat() on MySQL.
    return bindparam("token", type_=current.type) + func.substr(current, 1, kept)


def _upsert_session(tables: LatticeTables, dialect: Dialect) -> Insert:
    s = tables.sessions
    values: dict[str, Any] = {
        "session_id": bindparam("sid"),
        "created_at": bindparam("now"),
        "updated_at": bindparam("now"),
        "item_count": bindparam("n"),
        "write_tokens": bindparam("token"),
    }
    if is_mysql(dialect):
        my = mysql.insert(s).values(values)
        return my.on_duplicate_key_update(
            # Assignments run left to right and see earlier ones; none depends on another.
            updated_at=my.inserted.updated_at,
            item_count=s.c.item_count + my.inserted.item_count,
            write_tokens=_pushed_tokens(s.c.write_tokens),
        )
    module: Any = postgresql if rules(dialect).name == "postgresql" else sqlite
    ins = module.insert(s).values(values)
    return ins.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[s.c.session_id],
        set_={
            "updated_at": ins.excluded.updated_at,
            "item_count": s.c.item_count + ins.excluded.item_count,
            "write_tokens": _pushed_tokens(s.c.write_tokens),
        },
    )


def _of_session(m: Table, dialect: Dialect, columns: list[Any], newest_first: bool) -> Select[Any]:
    """``columns`` of one session's items in id order, served only by ``(session_id, id)``.

    ``WHERE session_id = :sid ORDER BY id DESC LIMIT n`` can also be planned
    as a backward scan of the primary key that filters out other sessions'
    rows: cheap while the session's newest rows are the table's newest, a
    read of every newer row when they sit behind other traffic (a session
    resumed after a million rows of others' writes reads the million). A
    planner picks it from statistics that cannot tell (PostgreSQL's generic
    plans, SQLite with few distinct sessions), so each dialect gets the form
    only the composite index can serve, in O(log n + limit)
    (``tests/test_query_plans.py`` asserts the plans):

    * PostgreSQL treats ``session_id`` as a constant under ``=`` and drops it
      from the sort key, leaving ``ORDER BY id`` that the primary key serves.
      ``session_id = ANY(ARRAY[:sid])`` is the same test (same estimates,
      same partition pruning) without that: the ordering by the full index
      key ``(session_id, id)`` stays, and only that index provides it.
    * SQLite does the same with ``=`` (and with a one-value ``IN``);
      ``session_id >= :sid AND session_id <= :sid`` (exactly ``=`` for text
      compared byte for byte) keeps the full key, which the rowid order
      cannot provide.
    * MySQL and MariaDB: ``FORCE INDEX``. The full key does not work there:
      MariaDB sorts (``filesort``) every row of the session for
      ``ORDER BY session_id DESC, id DESC``.
    """
    sid = bindparam("sid", type_=m.c.session_id.type)
    name = rules(dialect).name
    if name == "postgresql":
        # The element cast to text: an array of varchar would be coerced to
        # text[] as a whole, which hides the element from partition pruning
        # in generic plans (tests/test_partitions.py).
        query = select(*columns).where(
            m.c.session_id == any_(postgresql.array([cast(sid, Text)]))
        )
    elif name == "sqlite":
        query = select(*columns).where(and_(m.c.session_id >= sid, m.c.session_id <= sid))
    else:
        index = dialect.identifier_preparer.quote(_session_index(m))
        query = select(*columns).where(m.c.session_id == sid)
        query = query.with_hint(m, f"FORCE INDEX ({index})", dialect.name)
        return query.order_by(m.c.id.desc() if newest_first else m.c.id)
    if newest_first:
        return query.order_by(m.c.session_id.desc(), m.c.id.desc())
    return query.order_by(m.c.session_id, m.c.id)


def _session_index(m: Table) -> str:
    """The name of the messages table's ``(session_id, id)`` index."""
    for index in m.indexes:
        if [c.name for c in index.columns] == ["session_id", "id"]:
            assert index.name is not None
            return str(index.name)
    raise LookupError(f"{m.name} has no (session_id, id) index")


@lru_cache(maxsize=64)
def _statements(tables: LatticeTables, dialect_name: str, dialect: Dialect) -> Statements:
    s, m, j = tables.sessions, tables.messages, tables.journal
    this_session = s.c.session_id == bindparam("sid")
    its_messages = m.c.session_id == bindparam("sid")
    newest_id = _of_session(m, dialect, [m.c.id], newest_first=True).limit(1).scalar_subquery()
    delete_newest_returning: Any = None
    # DELETE ... RETURNING takes the newest row in one statement where the
    # dialect has it (PostgreSQL, SQLite >= 3.35). MySQL 8 has no RETURNING on
    # DELETE (MariaDB's is MariaDB-only SQL), and MySQL refuses a subquery on
    # the table being deleted from, so there it is SELECT then DELETE by key;
    # the session row lock taken first keeps that pair atomic for other writers.
    if rules(dialect).delete_returning:
        delete_newest_returning = (
            delete(m).where(its_messages, m.c.id == newest_id).returning(m.c.id, m.c.message_data)
        )
    return Statements(
        upsert_session=_upsert_session(tables, dialect),
        lock_session_clear=(
            update(s)
            .where(this_session)
            .values(
                updated_at=bindparam("now"),
                item_count=0,
                write_tokens=_pushed_tokens(s.c.write_tokens),
            )
        ),
        # A pop decrements the count up front and rolls back if it finds nothing.
        lock_session_pop=(
            update(s)
            .where(this_session)
            .values(
                updated_at=bindparam("now"),
                item_count=s.c.item_count - 1,
                write_tokens=_pushed_tokens(s.c.write_tokens),
            )
        ),
        insert_message=m.insert().values(
            session_id=bindparam("sid"), message_data=bindparam("data"), created_at=bindparam("now")
        ),
        insert_message_with_id=m.insert().values(
            id=bindparam("mid"),
            session_id=bindparam("sid"),
            message_data=bindparam("data"),
            created_at=bindparam("now"),
        ),
        select_all=_of_session(m, dialect, [m.c.message_data], newest_first=False),
        select_latest=(
            _of_session(m, dialect, [m.c.message_data], newest_first=True).limit(
                bindparam("lim", type_=m.c.id.type)
            )
        ),
        select_newest=_of_session(m, dialect, [m.c.id, m.c.message_data], newest_first=True).limit(
            1
        ),
        delete_newest_returning=delete_newest_returning,
        # By session too: on a table hash-partitioned by session (where the key
        # is (session_id, id)) that is what prunes the DELETE to one partition.
        delete_by_id=delete(m).where(its_messages, m.c.id == bindparam("mid")),
        delete_all=delete(m).where(its_messages),
        read_tokens=select(s.c.write_tokens).where(this_session).with_for_update(),
        journal_write=j.insert().values(
            token=bindparam("token"),
            session_id=bindparam("sid"),
            kind=bindparam("kind"),
            at_ms=EpochMillis(),
        ),
        journal_seq=select(j.c.seq).where(j.c.token == bindparam("token")),
        # A clear or a delete of the session after the write numbered ``seq``.
        journal_erased_since=(
            select(j.c.seq)
            .where(
                j.c.session_id == bindparam("sid"),
                j.c.seq > bindparam("seq", type_=j.c.seq.type),
                or_(j.c.kind == JOURNAL_CLEAR, j.c.kind == JOURNAL_DELETE),
            )
            .limit(1)
        ),
        journal_prune=delete(j).where(
            j.c.at_ms < EpochMillis() - bindparam("window_ms", type_=j.c.at_ms.type)
        ),
    )


def statements(tables: LatticeTables, dialect: Dialect) -> Statements:
    """The statements for ``tables`` on ``dialect`` (cached)."""
    return _statements(tables, dialect.name, dialect)


#: Whether this MySQL/MariaDB server is a Galera node (MariaDB Galera Cluster,
#: Percona XtraDB Cluster): the answer is ("wsrep_on", "ON"). A plain MySQL 8
#: or MariaDB answers no row, or "OFF", and raises no error.
GALERA_PROBE = "SHOW VARIABLES LIKE 'wsrep_on'"


#: Reads of this connection wait until the node has applied every write set
#: the cluster ordered before them (bit 1 of wsrep_sync_wait: SELECT, SHOW).
GALERA_SYNC_READS = "SET SESSION wsrep_sync_wait = 1"
#: Back to the server's setting.
GALERA_DEFAULT_READS = "SET SESSION wsrep_sync_wait = @@GLOBAL.wsrep_sync_wait"


def galera_from(rows: Any) -> bool:
    """Read the answer to :data:`GALERA_PROBE`."""
    return any(str(row[1]).upper() == "ON" for row in rows)


# Errors after which the whole transaction was rolled back by the server and
# may simply run again: MySQL deadlock (1213); PostgreSQL serialization
# failure (40001) and deadlock (40P01). A lock wait timeout is not among them:
# running again would wait the whole timeout again, so the bound a user set
# (lattice.engines.limit_lock_waits) would be multiplied by the retries.
_MYSQL_RETRY_CODES = frozenset({1213})
_PG_RETRY_STATES = frozenset({"40001", "40P01"})
# Lock wait timeouts: PostgreSQL lock_not_available (lock_timeout), MySQL 1205
# (innodb_lock_wait_timeout), SQLite SQLITE_BUSY (busy_timeout).
_PG_LOCK_TIMEOUT_STATE = "55P03"
_MYSQL_LOCK_TIMEOUT_CODE = 1205
_SQLITE_BUSY = 5


def is_transient_conflict(exc: DBAPIError) -> bool:
    """True when the server rolled the transaction back and a rerun is safe."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in _PG_RETRY_STATES:
        return True
    args: Any = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in _MYSQL_RETRY_CODES


def is_lock_timeout(exc: DBAPIError) -> bool:
    """True when the server gave up waiting for a lock (the statement did nothing)."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state == _PG_LOCK_TIMEOUT_STATE:
        return True
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_BUSY:
        return True
    args: Any = getattr(orig, "args", ())
    return bool(args) and args[0] == _MYSQL_LOCK_TIMEOUT_CODE


# A table or a column the statement names is not there: PostgreSQL
# undefined_table / undefined_column, MySQL 1146 / 1054; SQLite says it in words.
_PG_SCHEMA_STATES = {"42P01": "missing", "42703": "outdated"}
_MYSQL_SCHEMA_CODES = {1146: "missing", 1054: "outdated"}
_SQLITE_SCHEMA_WORDS = (
    ("no such table", "missing"),
    ("no such column", "outdated"),
    ("has no column named", "outdated"),
)


def schema_problem(exc: DBAPIError) -> str | None:
    """``"missing"`` (a table is not there), ``"outdated"`` (a column is not), or None."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in _PG_SCHEMA_STATES:
        return _PG_SCHEMA_STATES[state]
    args: Any = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_SCHEMA_CODES:
        return _MYSQL_SCHEMA_CODES[args[0]]
    if getattr(orig, "sqlite_errorcode", None) is not None or type(orig).__module__ == "sqlite3":
        message = str(orig)
        for words, problem in _SQLITE_SCHEMA_WORDS:
            if words in message:
                return problem
    return None


def lock_timeout_statement(dialect: Dialect, seconds: float) -> tuple[str, tuple[Any, ...]]:
    """Driver SQL and parameters that bound a connection's lock waits to ``seconds``.

    For a DB-API cursor of ``dialect``'s driver. PostgreSQL's ``lock_timeout``
    covers row and table locks; MySQL's ``innodb_lock_wait_timeout`` row
    locks, in whole seconds (at least 1); SQLite's ``busy_timeout`` the
    database lock (a PRAGMA takes no parameter: the value is an int computed
    here, never caller text).
    """
    ms = max(1, round(seconds * 1000))
    mark = _PLACEHOLDERS.get(dialect.paramstyle, "%s")
    if dialect.name == "postgresql":
        return f"SELECT set_config('lock_timeout', {mark}, false)", (f"{ms}ms",)
    if is_mysql(dialect):
        return f"SET SESSION innodb_lock_wait_timeout = {mark}", (max(1, round(seconds)),)
    if dialect.name == "sqlite":
        return f"PRAGMA busy_timeout = {int(ms)}", ()
    raise NotImplementedError(f"no lock timeout for {dialect.name!r}")


# The first positional placeholder in each DB-API paramstyle.
_PLACEHOLDERS = {"qmark": "?", "numeric": ":1", "numeric_dollar": "$1", "format": "%s"}
