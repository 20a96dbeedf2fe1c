"""aiosqlite: SQLite, a whole write transaction in one hand-off to the connection's thread.

aiosqlite makes one thread hand-off per call where SQLAlchemy's adapter
makes about four per statement (cursor, execute, fetch, close). The
``sqlite3`` module opens the transaction itself before the first write (its
default isolation level), as it does under SQLAlchemy; a read opens none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from .. import _compat
from .base import Plan, StepKind
from .connection import FastDriver

__all__ = ["AiosqliteDriver"]


def _run_plan_on_thread(
    db: Any, plan: list[tuple[StepKind, str, Any, bool]], commit: bool
) -> list[Any]:
    """On aiosqlite's thread: run a plan's statements (and commit), or roll back on error.

    ``db`` is the ``sqlite3`` connection, which opens the transaction itself
    before the first write (as it does for aiosqlite's own calls).
    """
    results: list[Any] = []
    try:
        for kind, sql, args, stop_if_empty in plan:
            if kind is StepKind.MANY:
                db.executemany(sql, args)
                result: Any = None
            elif kind is StepKind.ROWS:
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


class AiosqliteDriver(FastDriver):
    """SQLite through aiosqlite."""

    name: ClassVar[str] = "aiosqlite"
    # A whole write transaction in ONE hand-off to aiosqlite's thread instead
    # of one per statement plus one for COMMIT: on a pop, the lock, the
    # DELETE ... RETURNING and the COMMIT (docs/performance.md has the
    # measurements). Needs aiosqlite's private ``_execute`` (lattice._compat);
    # without it plans run statement by statement.
    runs_plans: ClassVar[bool] = True
    finishes_when_cancelled: ClassVar[bool] = True

    async def begin(self, conn: Any) -> None:
        # The sqlite3 module opens the transaction itself before the first
        # write; an engine in AUTOCOMMIT (isolation_level None) does not.
        if conn.isolation_level is None:
            await conn.execute("BEGIN")

    async def rows(self, conn: Any, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        return list(await conn.execute_fetchall(sql, args))

    async def count(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        cursor = await conn.execute(sql, args)
        return int(cursor.rowcount)

    async def many(self, conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
        await conn.executemany(sql, args)

    def idle(self, conn: Any) -> bool:
        return not conn.in_transaction

    def plan_fits(self, conn: Any, plan: Plan) -> bool:
        return _compat.sqlite_thread_calls_supported(conn)

    async def run_plan(
        self, conn: Any, plan: list[tuple[StepKind, str, Any, bool]], commit: bool
    ) -> list[Any]:
        results: list[Any] = await _compat.sqlite_thread_call(
            conn, _run_plan_on_thread, plan, commit
        )
        return results
