"""asyncpg: PostgreSQL on its fastest shapes (one-statement append, one-statement pop).

asyncpg runs outside a transaction in autocommit; ``BEGIN`` opens one.
Parameterised statements use asyncpg's own prepared-statement cache. The
driver cannot pipeline separate statements nor send several statements with
parameters in one query, so the shapes below fold a write's statements into
one statement instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import Dialect

from ..schema import (
    JOURNAL_WRITE,
    WRITE_TOKEN_LENGTH,
    WRITE_TOKENS_KEPT,
    EpochMillis,
    LatticeTables,
)
from .base import Stmt
from .compiled import Compiled
from .connection import FastDriver

__all__ = ["AsyncpgDriver"]


def _journal_cte(tables: LatticeTables, dialect: Dialect, token: int, source: str) -> str:
    """A CTE writing the write journal's row, after ``source`` (which holds the lock)."""
    prep = dialect.identifier_preparer
    j = prep.format_table(tables.journal)
    epoch = str(EpochMillis().compile(dialect=dialect))
    return (
        f"j AS (INSERT INTO {j} (token, session_id, kind, at_ms) "
        f"SELECT ${token}, {source}.session_id, '{JOURNAL_WRITE}', {epoch} FROM {source})"
    )


def _append_in_one(tables: LatticeTables, dialect: Dialect, upsert: Compiled) -> Compiled:
    """A whole append as ONE statement, run in autocommit.

    The session upsert is a data-modifying CTE whose ``RETURNING`` the INSERT
    of the items joins, with the items passed as one ``text[]`` and numbered
    by ``unnest(...) WITH ORDINALITY``. One round trip instead of four
    (BEGIN, upsert, insert, COMMIT).

    Why writers of one session still serialise, and batches stay contiguous
    and in order: the message ids come from the ``id`` default (``nextval``),
    which PostgreSQL evaluates in the projection above the join (EXPLAIN
    VERBOSE, PostgreSQL 15: ``Insert`` <- ``Subquery Scan`` (``nextval``) <-
    ``Nested Loop`` (``Function Scan on unnest``, ``CTE Scan on s``); the
    function scan is already in ``ord`` order, so no ``Sort`` is needed).
    Every row of the join needs the row the CTE's upsert returns, and the
    upsert returns it only once it holds the session row's lock (waiting for
    a concurrent writer's commit if need be), so no id is drawn before the
    lock is held; ``ORDER BY d.ord`` makes the ids follow the batch order
    whatever plan is chosen. The lock is held until the statement commits,
    so the next writer of the session draws its ids after this batch
    committed: what the BEGIN/upsert/INSERT/COMMIT form guarantees
    (conformance: ``test_concurrent_writers_keep_batches_whole``, 20
    writers). The statement commits as it ends, so a connection lost once it
    was sent makes :mod:`lattice.writes` ask the write token
    (``Checkout.maybe_committed``).
    """
    prep = dialect.identifier_preparer
    s, m = prep.format_table(tables.sessions), prep.format_table(tables.messages)
    now = 1 + upsert.bind_names().index("now")
    token = 1 + upsert.bind_names().index("token")
    items = len(upsert.binds) + 1
    # The journal's row comes from the upsert's RETURNING too, so it is written
    # under the session's lock and commits (or not) with the items.
    sql = (
        f"WITH s AS ({upsert.sql} RETURNING {s}.session_id), "
        f"{_journal_cte(tables, dialect, token, 's')} "
        f"INSERT INTO {m} (session_id, message_data, created_at) "
        f"SELECT s.session_id, d.data, ${now} "
        f"FROM s, unnest(${items}::TEXT[]) WITH ORDINALITY AS d(data, ord) "
        "ORDER BY d.ord"
    )
    return Compiled(sql, (*upsert.binds, ("texts", None, None)))


def _pop_in_one(tables: LatticeTables, dialect: Dialect, lock: Compiled) -> Compiled:
    """A pop's session lock and ``DELETE ... RETURNING`` as ONE statement.

    Still inside ``BEGIN`` ... ``COMMIT``, so the item is in hand before
    COMMIT is sent (a lost reply is recovered with the write token, as for
    every write): three round trips instead of four.

    The catch of one statement is its one snapshot, taken before the
    session lock is waited for. If a writer of the session committed in
    between, the newest item in the snapshot may be gone or not the newest.
    Every write of a session pushes a token onto ``write_tokens`` under that
    lock, so the statement compares the newest token in its snapshot
    (``snap``) with the one the locking ``UPDATE`` found (``locked``: after
    the push, characters 33-64 are the previous newest token; the UPDATE
    sees the latest committed row). Equal: nothing committed in between, and
    the snapshot's newest item is the session's. Different: the ``DELETE``
    does nothing, ``fresh`` is false, and the caller deletes in a second
    statement, which has a snapshot of its own.

    The ``DELETE`` names the session as well as the id: on a table
    hash-partitioned by session that prunes it to the session's partition.

    Lock order: the ``DELETE`` of ``gone`` evaluates ``(SELECT prev FROM
    locked)`` in its condition before it locks the message row, so the
    session row is locked first, as ``clear_session`` and appends do.

    Returns one row: ``locked`` (rows the lock matched), ``fresh``, and the
    popped ``id`` and ``message_data`` (NULL when nothing was popped).
    """
    prep = dialect.identifier_preparer
    s, m = prep.format_table(tables.sessions), prep.format_table(tables.messages)
    binds = {bind[0]: bind for bind in lock.binds}
    width, kept = WRITE_TOKEN_LENGTH, WRITE_TOKEN_LENGTH * (WRITE_TOKENS_KEPT - 1)
    sql = (
        f"WITH snap AS (SELECT substr(write_tokens, 1, {width}) AS front "
        f"FROM {s} WHERE session_id = $1), "
        f"locked AS (UPDATE {s} SET updated_at = $2, item_count = item_count - 1, "
        f"write_tokens = $3 || substr(write_tokens, 1, {kept}) WHERE session_id = $1 "
        f"RETURNING session_id, substr(write_tokens, {width + 1}, {width}) AS prev), "
        f"{_journal_cte(tables, dialect, 3, 'locked')}, "
        # The newest item in the form only the (session_id, id) index serves
        # (lattice.dialects._of_session says why); the DELETE names the
        # session too, so a partitioned table prunes to one partition.
        f"gone AS (DELETE FROM {m} WHERE session_id = $1 AND id = (SELECT id FROM {m} "
        "WHERE session_id = ANY(ARRAY[$1::text]) ORDER BY session_id DESC, id DESC LIMIT 1) "
        "AND (SELECT prev FROM locked) = (SELECT front FROM snap) "
        "RETURNING id, message_data) "
        "SELECT (SELECT count(*) FROM locked), "
        "(SELECT prev FROM locked) = (SELECT front FROM snap), "
        "(SELECT id FROM gone), (SELECT message_data FROM gone)"
    )
    return Compiled(sql, (binds["sid"], binds["now"], binds["token"]))


class AsyncpgDriver(FastDriver):
    """PostgreSQL through asyncpg."""

    name: ClassVar[str] = "asyncpg"
    append_in_one_statement: ClassVar[bool] = True
    pop_in_one_statement: ClassVar[bool] = True
    # SQLAlchemy's asyncpg adapter keeps autocommit as a flag (no round trip
    # to set or reset), and a single SELECT sees one snapshot either way:
    # get_items(limit=20) took 0.64x the time of BEGIN/SELECT/ROLLBACK
    # (median of 15 interleaved batches on a loaded 2-core machine).
    autocommit_reads: ClassVar[bool] = True

    def extra_statements(self, tables: Any, dialect: Any, compiled: dict[Stmt, Any]) -> None:
        compiled[Stmt.APPEND] = _append_in_one(tables, dialect, compiled[Stmt.UPSERT_SESSION])
        compiled[Stmt.POP] = _pop_in_one(tables, dialect, compiled[Stmt.LOCK_SESSION_POP])

    async def begin(self, conn: Any) -> None:
        await conn.execute("BEGIN")

    async def rows(self, conn: Any, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        return await conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def count(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        status: str = await conn.execute(sql, *args)  # "UPDATE 1", "DELETE 3"
        return int(status.rsplit(" ", 1)[-1])

    async def many(self, conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
        # One round trip: asyncpg pipelines the rows of an executemany.
        await conn.executemany(sql, args)

    async def commit(self, conn: Any) -> None:
        await conn.execute("COMMIT")

    async def rollback(self, conn: Any) -> None:
        await conn.execute("ROLLBACK")

    def idle(self, conn: Any) -> bool:
        return not conn.is_in_transaction()

    def closed(self, conn: Any) -> bool:
        return bool(conn.is_closed())
