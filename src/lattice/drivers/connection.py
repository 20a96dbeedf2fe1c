"""A connection from the engine's pool, running compiled statements on the driver itself.

Why: a statement through SQLAlchemy's async execution layer (``AsyncConnection``,
its greenlet hand-offs and execution context) cost about 0.5 ms of Python on
top of the driver, which on an indexed read or a small write *is* the gap to
the raw driver (docs/performance.md). On SQLite, SQLAlchemy's aiosqlite
adapter makes about four thread hand-offs per statement where aiosqlite
needs one.

What SQLAlchemy still does: the engine and its pool (checkout, pre-ping,
recycling, invalidation, pool events), the schema, and compiling the
statements (:mod:`lattice.drivers.compiled`).

What this module does: run that SQL on the checked-out driver connection with
explicit transactions, and translate driver exceptions the way SQLAlchemy
does (the dialect's own exception adaptation, ``dialect.is_disconnect``,
``DBAPIError.instance``), so callers and the recovery logic of
:mod:`lattice.writes` see the same ``DBAPIError`` subclasses, with
``connection_invalidated`` set on a lost connection and ``.orig`` carrying
the driver error. A disconnect invalidates the connection and the pool's
older connections, as SQLAlchemy does. A connection is only returned to the
pool outside any transaction; anything else (a cancellation in the middle of
a statement, an unknown error) closes it, so the pool never hands out a
connection in a bad state.

Testing hook: :attr:`lattice.engines.EngineState.trace`, when set, is awaited
before each statement, after it, and before COMMIT (see ``Checkout._trace``).
It costs one attribute test per statement when unset.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import _compat
from ..engines import EngineState
from ..schema import LatticeTables
from .base import Driver, Plan, Runner, StepKind, Stmt, run_steps
from .compiled import Compiled, compiled_statements

__all__ = ["Checkout", "FastDriver", "reading", "transaction"]


async def _outlast(awaitable: Any) -> Any:
    """Await ``awaitable`` to its end, whatever cancellations arrive meanwhile."""
    task = asyncio.ensure_future(awaitable)
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            continue
    return task.result()


class FastDriver(Driver):
    """A driver whose session statements run on its own connection object (the fast path).

    The methods take the driver's connection (``asyncpg.Connection``, an
    ``aiosqlite.Connection``, ...) and SQL text in the driver's paramstyle,
    compiled once per (tables, dialect) by :mod:`lattice.drivers.compiled`.
    """

    #: A statement whose caller is cancelled still runs to its end on the
    #: driver's own thread, and calls made after it wait for it (aiosqlite),
    #: so a cancelled block rolls back instead of closing the connection.
    finishes_when_cancelled: ClassVar[bool] = False

    @abstractmethod
    async def begin(self, conn: Any) -> None:
        """Start a transaction."""

    @abstractmethod
    async def rows(self, conn: Any, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        """Run a statement and return its rows."""

    @abstractmethod
    async def count(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        """Run a statement and return how many rows it matched."""

    @abstractmethod
    async def many(self, conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
        """Run a statement once per parameter set."""

    async def commit(self, conn: Any) -> None:
        """Commit (the DB-API's own method; asyncpg overrides)."""
        await conn.commit()

    async def rollback(self, conn: Any) -> None:
        """Roll back (the DB-API's own method; asyncpg overrides)."""
        await conn.rollback()

    @abstractmethod
    def idle(self, conn: Any) -> bool:
        """True when the connection is in no transaction (known without a round trip)."""

    def closed(self, conn: Any) -> bool:
        """True when the driver already knows the connection is closed."""
        return False

    def plan_fits(self, conn: Any, plan: Plan) -> bool:
        """True when :meth:`run_plan` can send this whole plan at once on ``conn``."""
        return self.runs_plans

    async def read_and_end(
        self, conn: Any, sql: str, args: tuple[Any, ...]
    ) -> Sequence[Sequence[Any]]:
        """A read that also ends the transaction it opened (``reads_open_transaction``)."""
        raise NotImplementedError(f"{self.name} reads do not open transactions")

    async def run_plan(
        self, conn: Any, plan: list[tuple[StepKind, str, Any, bool]], commit: bool
    ) -> list[Any]:
        """Run ``(kind, sql, args, stop_if_empty)`` statements, then commit if asked.

        The results of the statements that ran, or ``[]`` when the driver
        declines the plan before sending anything (it then runs step by step).
        """
        raise NotImplementedError(f"{self.name} does not run plans")

    def transaction(
        self, engine: Any, state: Any, tables: Any, autocommit: bool = False
    ) -> AbstractAsyncContextManager[Runner]:
        return transaction(engine, state, self, tables, autocommit)

    def reading(self, engine: Any, state: Any, tables: Any) -> AbstractAsyncContextManager[Runner]:
        return reading(engine, state, self, tables)


class Checkout:
    """A pooled connection running the tables' compiled statements (a :class:`Runner`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        state: EngineState,
        driver: FastDriver,
        compiled: dict[Stmt, Compiled],
        fairy: Any,
    ) -> None:
        self._dialect = engine.dialect
        self._pool = engine.sync_engine.pool
        self._state = state
        self._driver = driver
        self._compiled = compiled
        self._fairy = fairy
        self._conn = fairy.driver_connection
        self.finished = False
        self.autocommit = False  # no BEGIN: each statement commits as it ends
        self.reading = False  # a block of single-statement reads (``reading()``)
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

    async def rows(self, stmt: Stmt, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Run a statement and return its rows."""
        c = self._compiled[stmt]
        driver = self._driver
        if self.reading and driver.reads_open_transaction:
            # A read block's statement ends the transaction it opened itself.
            rows = await self._run(driver.read_and_end, c.sql, c.args(params))
            self.finished = True
            return rows  # type: ignore[no-any-return]
        return await self._run(driver.rows, c.sql, c.args(params))  # type: ignore[no-any-return]

    async def count(self, stmt: Stmt, params: Mapping[str, Any]) -> int:
        """Run a statement and return the number of rows it matched."""
        c = self._compiled[stmt]
        return await self._run(self._driver.count, c.sql, c.args(params))  # type: ignore[no-any-return]

    async def many(self, stmt: Stmt, params: list[dict[str, Any]]) -> None:
        """Run a statement once per parameter set."""
        c = self._compiled[stmt]
        await self._run(self._driver.many, c.sql, c.args_many(params))

    async def sql_rows(self, sql: str) -> Sequence[Sequence[Any]]:
        """Run literal SQL without parameters (``SELECT @@max_allowed_packet``)."""
        return await self._run(self._driver.rows, sql, ())  # type: ignore[no-any-return]

    async def sql_run(self, sql: str) -> None:
        """Run literal SQL that returns no rows (``SET SESSION ...``)."""
        await self._run(self._driver.count, sql, ())

    async def steps(self, plan: Plan, commit: bool = True) -> list[Any]:
        """Run ``plan``; with ``commit``, end the transaction (ROLLBACK where a step stopped it).

        Where the driver can (``runs_plans``), the whole plan goes to the driver
        at once; the trace hook then sees every statement, and the COMMIT,
        before they are sent. Elsewhere the steps run one by one (and the
        transaction block commits as usual). Without ``commit`` the
        transaction stays open.
        """
        driver = self._driver
        if self.autocommit or not driver.runs_plans or not driver.plan_fits(self._conn, plan):
            return await run_steps(self, plan)
        if self._state.galera:
            # On Galera a certification failure or a brute-force abort by a
            # replicated write can end the transaction in the middle of the
            # query; statements after it then ran in a transaction of their
            # own, which a COMMIT in the same query committed (a batch stored
            # twice, item_count off, in most rounds: tests/cluster). Without
            # the COMMIT the error reaches us first and everything is rolled
            # back; the transaction block then commits on its own, where a
            # 1213 is known to have rolled back and a lost reply is checked.
            commit = False
        sent = []
        for step in plan:
            c = self._compiled[step.stmt]
            many = step.kind is StepKind.MANY
            args = c.args_many(step.params) if many else c.args(step.params)
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

    async def begin(self) -> None:
        """Start the transaction."""
        try:
            await self._driver.begin(self._conn)
        except Exception as exc:
            raise self._error(exc, "BEGIN", ()) from exc

    async def commit(self) -> None:
        """Commit the transaction."""
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
            adapted = _compat.translate_driver_error(adapter, exc)
        if not isinstance(adapted, dbapi.Error):
            # Not a database error (OSError, a bug): the connection's state
            # is unknown, so it is closed rather than returned to the pool.
            self.invalidate(exc, whole_pool=False)
            return exc
        disconnect = bool(self._dialect.is_disconnect(adapted, adapter, None))
        if disconnect:
            self.invalidate(adapted, whole_pool=True)
        return DBAPIError.instance(
            sql,
            args,
            adapted,
            dbapi.Error,
            connection_invalidated=disconnect,
            dialect=self._dialect,
        )

    def invalidate(self, exc: BaseException | None, *, whole_pool: bool) -> None:
        """Mark the connection unusable (and, on a disconnect, every older one)."""
        fairy = self._fairy
        if whole_pool:
            _compat.invalidate_pool(self._pool, fairy, exc)
        elif fairy.is_valid:
            fairy.invalidate(exc)

    async def release(self, clean: bool, read: bool = False) -> None:
        """Return the connection to the pool, or close it if not known to be idle."""
        fairy = self._fairy
        driver = self._driver
        read_left_open = read and driver.reads_open_transaction and not self.finished
        if fairy.is_valid and (not clean or not driver.idle(self._conn) or read_left_open):
            if clean:
                # A MySQL read whose statement did not end its transaction.
                try:
                    await driver.rollback(self._conn)
                except Exception as exc:
                    self.invalidate(exc, whole_pool=False)
            if fairy.is_valid and not driver.idle(self._conn):
                self.invalidate(None, whole_pool=False)
        if fairy.is_valid:
            await _compat.return_idle_connection(fairy, self._pool)
        else:
            # Shielded so a second cancellation cannot leave it checked out.
            await asyncio.shield(_compat.close_connection(fairy))

    async def abort(self, exc: BaseException) -> None:
        """End a failed block: roll back if the connection allows, else close it; give it back."""
        try:
            if isinstance(exc, Exception) and self._fairy.is_valid:
                try:
                    await self._driver.rollback(self._conn)
                except Exception as err:
                    self.invalidate(err, whole_pool=False)
            elif self._driver.finishes_when_cancelled and self._fairy.is_valid:
                # Cancelled while a statement runs on the driver's own thread
                # (aiosqlite): it runs to its end whatever happens to its
                # caller, and the next call queues behind it, so a ROLLBACK
                # leaves the connection idle. Closing it instead would destroy
                # an in-memory database, whose one connection it is.
                try:
                    await _outlast(self._driver.rollback(self._conn))
                except Exception as err:
                    self.invalidate(err, whole_pool=False)
            else:
                # Cancelled (or interrupted) in the middle of a statement: the
                # driver connection may still be waiting for its reply. Closing
                # it is the only state known to be safe; the server rolls back.
                self.invalidate(exc, whole_pool=False)
        finally:
            await self.release(clean=False)


async def _checkout(
    engine: AsyncEngine, state: EngineState, driver: FastDriver, tables: LatticeTables
) -> Checkout:
    dialect = engine.dialect
    compiled = compiled_statements(tables, dialect, driver)
    try:
        fairy = await _compat.pool_checkout(engine.sync_engine.pool)
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
            await _compat.adapter_rollback(fairy.dbapi_connection)
        except BaseException:
            fairy.invalidate()
            await asyncio.shield(_compat.close_connection(fairy))
            raise
    return Checkout(engine, state, driver, compiled, fairy)


@asynccontextmanager
async def reading(
    engine: AsyncEngine, state: EngineState, driver: FastDriver, tables: LatticeTables
) -> AsyncIterator[Checkout]:
    """A connection for single-statement reads (no BEGIN; autocommit where the driver is)."""
    co = await _checkout(engine, state, driver, tables)
    co.reading = True
    try:
        yield co
    except BaseException as exc:
        await co.abort(exc)
        raise
    await co.release(clean=True, read=True)


@asynccontextmanager
async def transaction(
    engine: AsyncEngine,
    state: EngineState,
    driver: FastDriver,
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
            await co.begin()
        yield co
        if not (co.finished or autocommit):
            await co.commit()
    except BaseException as exc:
        await co.abort(exc)
        raise
    await co.release(clean=True)
