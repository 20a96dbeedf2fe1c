"""The general path: a session's statements through SQLAlchemy's ``AsyncConnection``.

Every dialect and driver SQLAlchemy supports runs here, with the same
statements and guarantees as the fast path; it is what an engine uses when
its driver has no fast path (``postgresql+psycopg``, ``mysql+asyncmy``) or
when a test switches the fast path off (``EngineState.fast_path = False``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..dialects import Statements, statements
from ..engines import EngineState, transaction
from ..schema import LatticeTables
from .base import Driver, Plan, Runner, Stmt, run_steps

__all__ = ["SQLAlchemyDriver", "SQLAlchemyRunner"]


class SQLAlchemyRunner:
    """A :class:`~lattice.drivers.base.Runner` on SQLAlchemy's ``AsyncConnection``."""

    def __init__(self, conn: AsyncConnection, stmts: Statements) -> None:
        self._conn = conn
        self._stmts = stmts
        self.finished = False
        self.maybe_committed = False
        self.if_committed: Any = None

    @property
    def connection(self) -> AsyncConnection:
        """The connection, in its transaction (advanced sessions run Core statements on it)."""
        return self._conn

    async def rows(self, stmt: Stmt, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return (await self._conn.execute(getattr(self._stmts, stmt.value), params)).all()

    async def count(self, stmt: Stmt, params: Mapping[str, Any]) -> int:
        result = await self._conn.execute(getattr(self._stmts, stmt.value), params)
        return int(result.rowcount)

    async def many(self, stmt: Stmt, params: list[dict[str, Any]]) -> None:
        await self._conn.execute(getattr(self._stmts, stmt.value), params)

    async def sql_rows(self, sql: str) -> Sequence[Sequence[Any]]:
        return (await self._conn.exec_driver_sql(sql)).all()

    async def sql_run(self, sql: str) -> None:
        await self._conn.exec_driver_sql(sql)

    async def rollback(self) -> None:
        await self._conn.rollback()
        self.finished = True

    async def steps(self, plan: Plan, commit: bool = True) -> list[Any]:
        return await run_steps(self, plan)


class SQLAlchemyDriver(Driver):
    """Any SQLAlchemy async driver, through ``AsyncConnection`` (no fast path).

    Args:
        name: The driver's SQLAlchemy name (for messages and the registry).
        autocommit_reads: Run single-statement reads in AUTOCOMMIT. Worth it
            where switching costs no round trip (SQLAlchemy's PostgreSQL
            adapters keep it as a flag); on MySQL switching costs a round trip
            each way.
    """

    name: ClassVar[str] = "sqlalchemy"

    def __init__(self, name: str, *, autocommit_reads: bool = False) -> None:
        self.driver_name = name
        self.read_in_autocommit = autocommit_reads

    def __repr__(self) -> str:
        return f"SQLAlchemyDriver({self.driver_name!r})"

    def transaction(
        self,
        engine: AsyncEngine,
        state: EngineState,
        tables: LatticeTables,
        autocommit: bool = False,
    ) -> AbstractAsyncContextManager[Runner]:
        return self._connection(engine, tables, reading=False)

    def reading(
        self, engine: AsyncEngine, state: EngineState, tables: LatticeTables
    ) -> AbstractAsyncContextManager[Runner]:
        return self._connection(engine, tables, reading=True)

    @asynccontextmanager
    async def _connection(
        self, engine: AsyncEngine, tables: LatticeTables, *, reading: bool
    ) -> AsyncIterator[Runner]:
        stmts = statements(tables, engine.dialect)
        if reading:
            async with engine.connect() as conn:
                if self.read_in_autocommit:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield SQLAlchemyRunner(conn, stmts)
        else:
            async with transaction(engine) as conn:
                yield SQLAlchemyRunner(conn, stmts)
