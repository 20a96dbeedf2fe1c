"""The driver fast path: a session's statements run on the driver connection.

Why: a statement through SQLAlchemy's async execution layer (``AsyncConnection``,
its greenlet hand-offs and execution context) cost about 0.5 ms of Python on
top of the driver, which on an indexed read or a small write *is* the gap to
the raw driver (docs/performance.md). Measured on PostgreSQL: one ``SELECT``
through ``AsyncConnection.execute`` 510 us, raw asyncpg 272 us, the same
``SELECT`` on the driver connection of a connection checked out from
SQLAlchemy's pool 312 us. On SQLite, SQLAlchemy's aiosqlite adapter makes
about four thread hand-offs per statement (cursor, execute, fetch, close)
where ``aiosqlite`` needs one.

What SQLAlchemy still does: the engine and its pool (checkout, pre-ping,
recycling, invalidation, pool events), the schema, and compiling each of the
prebuilt statements of :mod:`lattice.dialects` to SQL text once per (tables,
dialect). Bound values go through the same bind processors SQLAlchemy would
apply (the ``SessionId`` and ``UtcDateTime`` type decorators, SQLite's
datetime formatting), so what is stored is byte for byte what the
SQLAlchemy path stores.

What this module does: run that SQL on the checked-out driver connection
(asyncpg, aiomysql or aiosqlite) with explicit transactions, and translate
driver exceptions the way SQLAlchemy does (the dialect's own exception
adaptation, ``dialect.is_disconnect``, ``DBAPIError.instance``), so callers
and the recovery logic of ``SQLAlchemySession._write`` see the same
``DBAPIError`` subclasses, with ``connection_invalidated`` set on a lost
connection and ``.orig`` carrying the driver error. A disconnect invalidates
the connection and the pool's older connections, as SQLAlchemy does. A
connection is only returned to the pool outside any transaction; anything
else (a cancellation in the middle of a statement, an unknown error) closes
it, so the pool never hands out a connection in a bad state.

Testing hook: :attr:`lattice.engines.EngineState.trace`, when set, is awaited
before each statement, after it, and before COMMIT (see ``Checkout._trace``).
It costs one attribute test per statement when unset.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from .dialects import Statements, statements
from .engines import EngineState
from .schema import WRITE_TOKEN_LENGTH, WRITE_TOKENS_KEPT, LatticeTables

__all__ = [
    "Checkout",
    "Driver",
    "Runner",
    "SQLAlchemyRunner",
    "Step",
    "compiled_sql",
    "driver_for",
    "has_append_in_one",
    "has_pop_in_one",
    "reading",
    "run_steps",
    "transaction",
]


class Runner(Protocol):
    """What a session's reads and writes run on: statements named as in ``Statements``."""

    finished: bool
    maybe_committed: bool
    #: What the write returns if its transaction turns out to have committed,
    #: set by a body before a statement that commits (``steps``), so a lost
    #: reply can still hand it over (``SQLAlchemySession._write``).
    if_committed: Any

    async def rows(self, name: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]: ...

    async def count(self, name: str, params: Mapping[str, Any]) -> int: ...

    async def many(self, name: str, params: list[dict[str, Any]]) -> None: ...

    async def sql_rows(self, sql: str) -> Sequence[Sequence[Any]]: ...

    async def rollback(self) -> None: ...

    async def steps(self, plan: Sequence[Step], commit: bool = True) -> list[Any]: ...


@dataclass(frozen=True)
class Step:
    """One statement of a :meth:`Runner.steps` plan.

    ``kind`` is ``"count"`` (rows matched), ``"rows"`` (the rows) or ``"many"``
    (``params`` is a list of parameter sets; result ``None``). With
    ``stop_if_empty``, a result of 0 or no rows ends the plan there and rolls
    the transaction back.
    """

    kind: str
    name: str
    params: Any
    stop_if_empty: bool = False


async def run_steps(runner: Runner, plan: Sequence[Step]) -> list[Any]:
    """Run ``plan`` one statement at a time on ``runner`` (the general way).

    The results of the statements that ran, in order. A step with
    ``stop_if_empty`` whose result is empty rolls back and ends the plan.
    """
    results: list[Any] = []
    for step in plan:
        if step.kind == "many":
            await runner.many(step.name, step.params)
            result: Any = None
        elif step.kind == "rows":
            result = await runner.rows(step.name, step.params)
        else:
            result = await runner.count(step.name, step.params)
        results.append(result)
        if step.stop_if_empty and not result:
            await runner.rollback()
            break
    return results


class SQLAlchemyRunner:
    """The :class:`Runner` of a dialect without a fast path: SQLAlchemy's ``AsyncConnection``."""

    def __init__(self, conn: AsyncConnection, stmts: Statements) -> None:
        self._conn = conn
        self._stmts = stmts
        self.finished = False
        self.maybe_committed = False
        self.if_committed: Any = None

    async def rows(self, name: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return (await self._conn.execute(getattr(self._stmts, name), params)).all()

    async def count(self, name: str, params: Mapping[str, Any]) -> int:
        return int((await self._conn.execute(getattr(self._stmts, name), params)).rowcount)

    async def many(self, name: str, params: list[dict[str, Any]]) -> None:
        await self._conn.execute(getattr(self._stmts, name), params)

    async def sql_rows(self, sql: str) -> Sequence[Sequence[Any]]:
        return (await self._conn.exec_driver_sql(sql)).all()

    async def rollback(self) -> None:
        await self._conn.rollback()
        self.finished = True

    async def steps(self, plan: Sequence[Step], commit: bool = True) -> list[Any]:
        return await run_steps(self, plan)


@dataclass(frozen=True)
class Compiled:
    """One statement as driver SQL, and how to build its positional arguments."""

    sql: str
    # (bind name, SQLAlchemy's bind processor or None, default value) per position.
    binds: tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, process, default in self.binds:
            value = params.get(name, default)
            out.append(value if process is None or value is None else process(value))
        return tuple(out)

    def args_many(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """``args`` for each row, processing each distinct bound object once.

        The rows of one append share their session id and timestamp objects;
        converting those once instead of per row (SQLite formats a datetime
        as text, MySQL encodes the id) took an append of 100 items on SQLite
        from 3.8 to 3.1 ms (profile: per-row bind processing was 1 ms of it).
        """
        memo: dict[tuple[int, int], Any] = {}
        out = []
        for params in rows:
            row = []
            for position, (name, process, default) in enumerate(self.binds):
                value = params.get(name, default)
                if process is not None and value is not None:
                    # The rows keep every value alive, so id() is unique here.
                    key = (position, id(value))
                    if key not in memo:
                        memo[key] = process(value)
                    value = memo[key]
                row.append(value)
            out.append(tuple(row))
        return out


def _compile(statement: Any, dialect: Dialect) -> Compiled:
    compiled = statement.compile(dialect=dialect)
    binds = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        binds.append((name, process, None if bind.required else bind.effective_value))
    return Compiled(compiled.string, tuple(binds))


#: The name of the one-statement append (PostgreSQL), see :func:`_append_in_one`.
APPEND = "append"


def _append_in_one(tables: LatticeTables, dialect: Dialect, upsert: Compiled) -> Compiled:
    """PostgreSQL: a whole append as ONE statement, run in autocommit.

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
    was sent makes ``SQLAlchemySession._write`` ask the write token
    (``Checkout.maybe_committed``).
    """
    prep = dialect.identifier_preparer
    s, m = prep.format_table(tables.sessions), prep.format_table(tables.messages)
    now = 1 + [name for name, _, _ in upsert.binds].index("now")
    items = len(upsert.binds) + 1
    sql = (
        f"WITH s AS ({upsert.sql} RETURNING {s}.session_id) "
        f"INSERT INTO {m} (session_id, message_data, created_at) "
        f"SELECT s.session_id, d.data, ${now} "
        f"FROM s, unnest(${items}::TEXT[]) WITH ORDINALITY AS d(data, ord) "
        "ORDER BY d.ord"
    )
    return Compiled(sql, (*upsert.binds, ("texts", None, None)))


#: The name of the pop's lock-and-delete statement (PostgreSQL), see :func:`_pop_in_one`.
POP = "pop"


def _pop_in_one(tables: LatticeTables, dialect: Dialect, lock: Compiled) -> Compiled:
    """PostgreSQL: a pop's session lock and ``DELETE ... RETURNING`` as ONE statement.

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
        f"RETURNING substr(write_tokens, {width + 1}, {width}) AS prev), "
        f"gone AS (DELETE FROM {m} WHERE id = (SELECT id FROM {m} WHERE session_id = $1 "
        "ORDER BY id DESC LIMIT 1) AND (SELECT prev FROM locked) = (SELECT front FROM snap) "
        "RETURNING id, message_data) "
        "SELECT (SELECT count(*) FROM locked), "
        "(SELECT prev FROM locked) = (SELECT front FROM snap), "
        "(SELECT id FROM gone), (SELECT message_data FROM gone)"
    )
    return Compiled(sql, (binds["sid"], binds["now"], binds["token"]))


@lru_cache(maxsize=64)
def _compiled(tables: LatticeTables, dialect_name: str, dialect: Dialect) -> dict[str, Compiled]:
    stmts: Statements = statements(tables, dialect)
    out = {}
    for f in fields(stmts):
        statement = getattr(stmts, f.name)
        if statement is not None:
            out[f.name] = _compile(statement, dialect)
    if dialect.driver == "asyncpg":
        out[APPEND] = _append_in_one(tables, dialect, out["upsert_session"])
        out[POP] = _pop_in_one(tables, dialect, out["lock_session_pop"])
    return out


def compiled_sql(tables: LatticeTables, dialect: Dialect, name: str) -> Compiled:
    """The driver SQL Lattice runs for statement ``name`` (``APPEND``, ``POP``, a field)."""
    return _compiled(tables, dialect.name, dialect)[name]


def has_pop_in_one(engine: AsyncEngine) -> bool:
    """True when a pop's lock and delete are one statement (``POP``) on ``engine``."""
    return engine.dialect.driver == "asyncpg"


def has_append_in_one(engine: AsyncEngine) -> bool:
    """True when appends run as one autocommit statement (``APPEND``) on ``engine``."""
    return engine.dialect.driver == "asyncpg"


# -- the drivers ----------------------------------------------------------------------


class Driver:
    """How one driver runs SQL, ends transactions and tells whether it is in one."""

    #: A read leaves a transaction open that the server does not report (MySQL).
    reads_open_transaction = False

    async def begin(self, conn: Any) -> None:
        raise NotImplementedError

    async def rows(self, conn: Any, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def count(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        raise NotImplementedError

    async def many(self, conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def commit(self, conn: Any) -> None:
        # The DB-API's own methods (aiosqlite, aiomysql); asyncpg has none.
        await conn.commit()

    async def rollback(self, conn: Any) -> None:
        await conn.rollback()

    def idle(self, conn: Any) -> bool:
        """True when the connection is in no transaction (known without a round trip)."""
        raise NotImplementedError

    def closed(self, conn: Any) -> bool:
        """True when the driver already knows the connection is closed."""
        return False

    def runs_plans(self, conn: Any, plan: Sequence[Step]) -> bool:
        """True when :meth:`run_plan` can run this whole transaction on ``conn``."""
        return False

    async def read_and_end(
        self, conn: Any, sql: str, args: tuple[Any, ...]
    ) -> Sequence[Sequence[Any]]:
        """A read that also ends the transaction it opened (``reads_open_transaction``)."""
        raise NotImplementedError

    async def run_plan(
        self, conn: Any, plan: list[tuple[str, str, Any, bool]], commit: bool
    ) -> list[Any]:
        """Run (kind, sql, args, stop_if_empty) statements, then commit if asked; see ``Step``.

        The results of the statements that ran, or ``[]`` when the driver
        declines the plan before sending anything (it then runs step by step).
        """
        raise NotImplementedError


class _Asyncpg(Driver):
    # asyncpg runs outside a transaction in autocommit; BEGIN opens one.
    # Parameterised statements use asyncpg's own prepared-statement cache.
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


class _Aiosqlite(Driver):
    # One thread hand-off per statement (aiosqlite's execute / execute_fetchall /
    # executemany) where SQLAlchemy's adapter makes about four. The sqlite3
    # module opens the transaction itself before the first write (its default
    # isolation level), as it does under SQLAlchemy; a read opens none.
    async def begin(self, conn: Any) -> None:
        return None

    async def rows(self, conn: Any, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        return list(await conn.execute_fetchall(sql, args))

    async def count(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        cursor = await conn.execute(sql, args)
        return int(cursor.rowcount)

    async def many(self, conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
        await conn.executemany(sql, args)

    def idle(self, conn: Any) -> bool:
        return not conn.in_transaction

    # A whole write transaction in ONE hand-off to aiosqlite's thread instead
    # of one per statement plus one for COMMIT: on a pop, the lock, the
    # DELETE ... RETURNING and the COMMIT (docs/performance.md has the
    # measurements). aiosqlite has no public way to run a function on its
    # thread; ``_execute`` (the method its own execute() uses, present since
    # 0.17) is checked for, and without it plans run statement by statement.
    def runs_plans(self, conn: Any, plan: Sequence[Step]) -> bool:
        return callable(getattr(conn, "_execute", None))

    async def run_plan(
        self, conn: Any, plan: list[tuple[str, str, Any, bool]], commit: bool
    ) -> list[Any]:
        return await conn._execute(_sqlite_plan, conn._conn, plan, commit)  # type: ignore[no-any-return]


def _sqlite_plan(db: Any, plan: list[tuple[str, str, Any, bool]], commit: bool) -> list[Any]:
    """On aiosqlite's thread: run a plan's statements (and commit), or roll back on error.

    ``db`` is the ``sqlite3`` connection, which opens the transaction itself
    before the first write (as it does for aiosqlite's own calls).
    """
    results: list[Any] = []
    try:
        for kind, sql, args, stop_if_empty in plan:
            if kind == "many":
                db.executemany(sql, args)
                result: Any = None
            elif kind == "rows":
                result = db.execute(sql, args).fetchall()
            else:
                result = db.execute(sql, args).rowcount
            results.append(result)
            if stop_if_empty and not result:
                db.rollback()
                return results
        if commit:
            db.commit()
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise
    return results


class _Aiomysql(Driver):
    # The connection is not in autocommit (SQLAlchemy's setting): the first
    # statement opens the transaction, and a read must end with ROLLBACK so
    # the connection does not keep its snapshot and metadata locks in the
    # pool (the server does not flag a transaction that has only read).
    reads_open_transaction = True

    async def read_and_end(
        self, conn: Any, sql: str, args: tuple[Any, ...]
    ) -> Sequence[Sequence[Any]]:
        # The SELECT and its ROLLBACK in one round trip: aiomysql always
        # connects with CLIENT.MULTI_STATEMENTS, and interpolates the
        # arguments itself, so the two statements go as one query and come
        # back as two results (closing the cursor reads the second). If the
        # SELECT fails the server skips the ROLLBACK, and the error path rolls
        # back. get_items(limit=20) on MariaDB: 2 round trips -> 1 (see
        # docs/performance.md).
        async with conn.cursor() as cursor:
            await cursor.execute(sql + "; ROLLBACK", args)
            return await cursor.fetchall()  # type: ignore[no-any-return]

    # A write transaction as ONE query (statements joined by ";", then
    # COMMIT), answered by one result per statement: one round trip instead of
    # one per statement plus one for COMMIT. aiomysql interpolates arguments
    # on the client and always connects with CLIENT.MULTI_STATEMENTS. Only for
    # plans that never stop early (the server runs every statement sent) and
    # whose query stays under aiomysql's own statement size (1 MB), so a big
    # append still goes as executemany's chunks; an item near
    # max_allowed_packet is refused before (``_check_packet``).
    MAX_PLAN_BYTES = 1_024_000

    def runs_plans(self, conn: Any, plan: Sequence[Step]) -> bool:
        return not any(step.stop_if_empty for step in plan)

    async def run_plan(
        self, conn: Any, plan: list[tuple[str, str, Any, bool]], commit: bool
    ) -> list[Any]:
        async with conn.cursor() as cursor:
            parts = []
            for kind, sql, args, _ in plan:
                if kind == "many":
                    # INSERT ... VALUES (...) as one multi-row INSERT, as executemany does.
                    head, values = sql.rsplit(" VALUES ", 1)
                    rows = ",".join(cursor.mogrify(values, row) for row in args)
                    parts.append(f"{head} VALUES {rows}")
                else:
                    parts.append(cursor.mogrify(sql, args))
            query = ";\n".join([*parts, "COMMIT"] if commit else parts)
            # Binary values (the session id) come back from escaping as
            # surrogate-escaped text, which aiomysql encodes the same way.
            size = len(query.encode("utf-8", "surrogateescape"))
            if size > self.MAX_PLAN_BYTES:
                return []  # too big for one query: the caller runs the steps one by one
            results: list[Any] = []
            await cursor.execute(query)
            for kind, _, _, _ in plan:
                results.append(await cursor.fetchall() if kind == "rows" else cursor.rowcount)
                await cursor.nextset()
            return results

    async def begin(self, conn: Any) -> None:
        return None

    async def rows(self, conn: Any, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        async with conn.cursor() as cursor:
            await cursor.execute(sql, args)
            return await cursor.fetchall()  # type: ignore[no-any-return]

    async def count(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        async with conn.cursor() as cursor:
            # Rows matched, not changed: SQLAlchemy connects with CLIENT.FOUND_ROWS.
            return int(await cursor.execute(sql, args))

    async def many(self, conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
        async with conn.cursor() as cursor:
            # aiomysql folds an INSERT's rows into one multi-row statement.
            await cursor.executemany(sql, args)

    def idle(self, conn: Any) -> bool:
        return not conn.get_transaction_status()


_DRIVERS: dict[str, Driver] = {
    "asyncpg": _Asyncpg(),
    "aiosqlite": _Aiosqlite(),
    "aiomysql": _Aiomysql(),
}


def driver_for(engine: AsyncEngine) -> Driver | None:
    """The fast-path driver for ``engine``, or None (then the SQLAlchemy path is used)."""
    return _DRIVERS.get(engine.dialect.driver)


# -- a checked-out connection ------------------------------------------------------------


class Checkout:
    """A connection from the engine's pool, running the tables' compiled statements.

    Statements are named as the fields of :class:`lattice.dialects.Statements`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        state: EngineState,
        driver: Driver,
        compiled: dict[str, Compiled],
        fairy: Any,
    ) -> None:
        self._dialect = engine.dialect
        self._pool = engine.sync_engine.pool
        self._state = state
        self._driver = driver
        self._compiled = compiled
        self._fairy = fairy
        self._conn = fairy.driver_connection
        self.finished = False  # the transaction was ended (rollback(), or a plan in steps())
        self.autocommit = False  # no BEGIN: each statement commits as it ends
        self.reading = False  # a block of single-statement reads (``reading()``)
        #: An autocommit statement was sent: a lost connection leaves its outcome unknown.
        self.maybe_committed = False
        self.if_committed: Any = None

    async def _trace(self, when: str, sql: str | None) -> None:
        trace = self._state.trace
        if trace is not None:
            await trace(when, sql, self._fairy.info)

    async def _run(self, op: Any, sql: str, args: Any) -> Any:
        trace = self._state.trace
        if trace is not None:
            await trace("before_cursor_execute", sql, self._fairy.info)
            if self.autocommit:
                await trace("commit", None, self._fairy.info)
        if self.autocommit and not self._driver.closed(self._conn):
            # Sent on a live connection: if the reply is lost, it may have committed.
            self.maybe_committed = True
        try:
            result = await op(self._conn, sql, args)
        except Exception as exc:
            raise self._error(exc, sql, args) from exc
        if trace is not None:
            await trace("after_cursor_execute", sql, self._fairy.info)
        return result

    async def rows(self, name: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Run a statement and return its rows."""
        c = self._compiled[name]
        driver = self._driver
        if self.reading and driver.reads_open_transaction:
            # A read block's statement ends the transaction it opened itself.
            rows = await self._run(driver.read_and_end, c.sql, c.args(params))
            self.finished = True
            return rows  # type: ignore[no-any-return]
        return await self._run(driver.rows, c.sql, c.args(params))  # type: ignore[no-any-return]

    async def count(self, name: str, params: Mapping[str, Any]) -> int:
        """Run a statement and return the number of rows it matched."""
        c = self._compiled[name]
        return await self._run(self._driver.count, c.sql, c.args(params))  # type: ignore[no-any-return]

    async def many(self, name: str, params: list[dict[str, Any]]) -> None:
        """Run a statement once per parameter set."""
        c = self._compiled[name]
        await self._run(self._driver.many, c.sql, c.args_many(params))

    async def sql_rows(self, sql: str) -> Sequence[Sequence[Any]]:
        """Run literal SQL without parameters (``SELECT @@max_allowed_packet``)."""
        return await self._run(self._driver.rows, sql, ())  # type: ignore[no-any-return]

    async def steps(self, plan: Sequence[Step], commit: bool = True) -> list[Any]:
        """Run ``plan``; with ``commit``, end the transaction (ROLLBACK where a step stopped it).

        Where the driver can (aiosqlite: one hand-off to its thread; aiomysql:
        one query), the whole plan goes to the driver at once; the trace hook
        then sees every statement, and the COMMIT, before they are sent.
        Elsewhere the steps run one by one (and the transaction block commits
        as usual). Without ``commit`` the transaction stays open.
        """
        driver = self._driver
        if self.autocommit or not driver.runs_plans(self._conn, plan):
            return await run_steps(self, plan)
        sent = []
        for step in plan:
            c = self._compiled[step.name]
            args = c.args_many(step.params) if step.kind == "many" else c.args(step.params)
            sent.append((step.kind, c.sql, args, step.stop_if_empty))
        if self._state.trace is not None:
            for _, sql, _, _ in sent:
                await self._trace("before_cursor_execute", sql)
            if commit:
                await self._trace("commit", None)
        if commit and not driver.closed(self._conn):
            # COMMIT goes with the statements: if the reply is lost, it may have committed.
            self.maybe_committed = True
        try:
            results = await driver.run_plan(self._conn, sent, commit)
        except Exception as exc:
            raise self._error(exc, ";\n".join(sql for _, sql, _, _ in sent), None) from exc
        if not results and plan:
            # The driver declined this plan (too big for one query): step by step.
            self.maybe_committed = False
            return await run_steps(self, plan)
        stopped = any(st.stop_if_empty and not r for st, r in zip(plan, results, strict=False))
        if commit or stopped:
            self.finished = True  # committed, or rolled back where a step stopped it
        if self._state.trace is not None:
            for _, sql, _, _ in sent[: len(results)]:
                await self._trace("after_cursor_execute", sql)
        return results

    async def rollback(self) -> None:
        """End the transaction, undoing it."""
        try:
            await self._driver.rollback(self._conn)
        except Exception as exc:
            raise self._error(exc, "ROLLBACK", ()) from exc
        self.finished = True

    async def _begin(self) -> None:
        try:
            await self._driver.begin(self._conn)
        except Exception as exc:
            raise self._error(exc, "BEGIN", ()) from exc

    async def _commit(self) -> None:
        await self._trace("commit", None)
        try:
            await self._driver.commit(self._conn)
        except Exception as exc:
            raise self._error(exc, "COMMIT", ()) from exc

    def _error(self, exc: Exception, sql: str, args: Any) -> BaseException:
        """Translate a driver error as SQLAlchemy does, invalidating on a disconnect."""
        dbapi = self._dialect.loaded_dbapi
        adapted: Exception = exc
        adapter = self._fairy.dbapi_connection
        if not isinstance(exc, dbapi.Error) and adapter is not None:
            # The dialect's own mapping of driver exceptions to its DBAPI
            # classes (asyncpg's errors; aiosqlite's "no active connection").
            try:
                adapter._handle_exception(exc)
            except Exception as translated:  # it always raises
                adapted = translated
        if not isinstance(adapted, dbapi.Error):
            # Not a database error (OSError, a bug): the connection's state
            # is unknown, so it is closed rather than returned to the pool.
            self._invalidate(exc, whole_pool=False)
            return exc
        disconnect = bool(self._dialect.is_disconnect(adapted, adapter, None))
        if disconnect:
            self._invalidate(adapted, whole_pool=True)
        return DBAPIError.instance(
            sql,
            args,
            adapted,
            dbapi.Error,
            connection_invalidated=disconnect,
            dialect=self._dialect,
        )

    def _invalidate(self, exc: BaseException | None, *, whole_pool: bool) -> None:
        fairy = self._fairy
        if whole_pool:
            # As SQLAlchemy's Connection does on a disconnect: connections made
            # before this one are recycled on their next checkout (a server
            # restart killed them all), and this one is closed now.
            self._pool._invalidate(fairy, exc)
        elif fairy.is_valid:
            fairy.invalidate(exc)

    async def _release(self, clean: bool, read: bool = False) -> None:
        """Return the connection to the pool, or close it if not known to be idle."""
        fairy = self._fairy
        driver = self._driver
        read_left_open = read and driver.reads_open_transaction and not self.finished
        if fairy.is_valid and (not clean or not driver.idle(self._conn) or read_left_open):
            if clean:
                # A MySQL read whose statement did not end its transaction.
                try:
                    await self._driver.rollback(self._conn)
                except Exception as exc:
                    self._invalidate(exc, whole_pool=False)
            if fairy.is_valid and not self._driver.idle(self._conn):
                self._invalidate(None, whole_pool=False)
        if fairy.is_valid:
            # Known idle: the pool's reset-on-return ROLLBACK would be a wasted
            # round trip (a thread hop on SQLite). This is what SQLAlchemy's
            # Connection does after it committed or rolled back itself.
            if _queue_has_room(self._pool):
                # The connection only goes back on the pool's queue, with no
                # reset and no close: nothing to await, so no greenlet
                # hand-off (about 30 us of a 340 us indexed read on PostgreSQL).
                fairy._close_special(transaction_reset=True)
            else:
                await greenlet_spawn(fairy._close_special, transaction_reset=True)
        else:
            # Nothing to await for a closed connection's record; shielded so a
            # second cancellation cannot leave it checked out.
            await asyncio.shield(greenlet_spawn(fairy.close))


def _queue_has_room(pool: Any) -> bool:
    """True when a connection given back to ``pool`` is queued, not closed (no I/O)."""
    size = getattr(pool, "size", None)
    checkedin = getattr(pool, "checkedin", None)
    return callable(size) and callable(checkedin) and bool(checkedin() < size())


async def _checkout(
    engine: AsyncEngine, state: EngineState, driver: Driver, tables: LatticeTables
) -> Checkout:
    dialect = engine.dialect
    compiled = _compiled(tables, dialect.name, dialect)
    try:
        fairy = await greenlet_spawn(engine.sync_engine.pool.connect)
    except dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy wraps a failed connect: a DBAPIError, flagged when the
        # server is unreachable. Other errors (OSError) pass as they are.
        raise DBAPIError.instance(
            None,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=bool(dialect.is_disconnect(exc, None, None)),
            dialect=dialect,
        ) from exc
    if not driver.idle(fairy.driver_connection):
        # A transaction left open by SQLAlchemy's adapter before we got the
        # connection (a "connect" event that ran a query: the adapter begins a
        # transaction for it). End it through the adapter, so both the server
        # and the adapter's own bookkeeping agree the connection is idle.
        try:
            adapter: Any = fairy.dbapi_connection
            await greenlet_spawn(adapter.rollback)
        except BaseException:
            fairy.invalidate()
            await asyncio.shield(greenlet_spawn(fairy.close))
            raise
    return Checkout(engine, state, driver, compiled, fairy)


async def _abort(co: Checkout, exc: BaseException) -> None:
    """End a failed block: roll back if the connection allows, else close it; give it back."""
    try:
        if isinstance(exc, Exception) and co._fairy.is_valid:
            try:
                await co._driver.rollback(co._conn)
            except Exception as err:
                co._invalidate(err, whole_pool=False)
        else:
            # Cancelled (or interrupted) in the middle of a statement: the
            # driver connection may still be waiting for its reply. Closing it
            # is the only state known to be safe; the server rolls back.
            co._invalidate(exc, whole_pool=False)
    finally:
        await co._release(clean=False)


@asynccontextmanager
async def reading(
    engine: AsyncEngine, state: EngineState, driver: Driver, tables: LatticeTables
) -> AsyncIterator[Checkout]:
    """A connection for single-statement reads (no BEGIN; autocommit where the driver is)."""
    co = await _checkout(engine, state, driver, tables)
    co.reading = True
    try:
        yield co
    except BaseException as exc:
        await _abort(co, exc)
        raise
    await co._release(clean=True, read=True)


@asynccontextmanager
async def transaction(
    engine: AsyncEngine,
    state: EngineState,
    driver: Driver,
    tables: LatticeTables,
    autocommit: bool = False,
) -> AsyncIterator[Checkout]:
    """A connection in a transaction, committed when the block ends without error.

    On an error the transaction is rolled back (or the connection closed, which
    rolls it back on the server); on a cancellation the connection is closed,
    as the statement in flight may still be running on it. With
    ``autocommit``, no transaction: each statement commits by itself (the
    trace hook sees a ``"commit"`` before each).
    """
    co = await _checkout(engine, state, driver, tables)
    co.autocommit = autocommit
    try:
        if not autocommit:
            await co._begin()
        yield co
        if not (co.finished or autocommit):
            await co._commit()
    except BaseException as exc:
        await _abort(co, exc)
        raise
    await co._release(clean=True)
