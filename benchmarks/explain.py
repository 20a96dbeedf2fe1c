"""EXPLAIN of the statements Lattice runs for reads and pops, on a data set.

:func:`statement_plan` is also what ``tests/test_query_plans.py`` asserts on.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from lattice.dialects import statements
from lattice.drivers import Stmt, driver_for
from lattice.drivers.compiled import Compiled, compiled_statements
from lattice.drivers.connection import FastDriver
from lattice.engines import engine_state
from lattice.schema import LatticeTables, lattice_tables

from .datasets import BIG_SESSION, DataSet
from .impls import Impl

__all__ = ["explain_plans", "session_statements", "statement_plan"]

_EXPLAIN = {"postgresql": "EXPLAIN (COSTS OFF) ", "sqlite": "EXPLAIN QUERY PLAN "}


def session_statements(engine: Any, tables: LatticeTables) -> list[tuple[str, Any]]:
    """(label, statement) of every read and pop a session runs on ``engine``.

    The driver SQL (:class:`Compiled`) on the fast drivers; the SQLAlchemy
    statement elsewhere (psycopg, asyncmy), as the driver runs them.
    """
    driver = driver_for(engine, engine_state(engine))
    stmts = statements(tables, engine.dialect)
    if isinstance(driver, FastDriver):
        compiled: dict[Stmt, Any] = compiled_statements(tables, engine.dialect, driver)
    else:
        compiled = {stmt: getattr(stmts, stmt.value, None) for stmt in Stmt}
    out = [
        ("d: get_items(limit=20)", compiled[Stmt.SELECT_LATEST]),
        ("c: get_items()", compiled[Stmt.SELECT_ALL]),
    ]
    if driver.pop_in_one_statement:
        # The lock and the delete in one statement (driver SQL, ``Stmt.POP``).
        out.append(("h: pop_item (lock and delete)", compiled[Stmt.POP]))
    if stmts.delete_newest_returning is not None:
        out.append(("h: pop_item", compiled[Stmt.DELETE_NEWEST_RETURNING]))
    out.append(("h: pop_item (newest row)", compiled[Stmt.SELECT_NEWEST]))
    return out


async def statement_plan(
    conn: AsyncConnection, statement: Any, params: dict[str, Any]
) -> list[str]:
    """The plan of ``statement`` with ``params`` bound, one line per plan row."""
    dialect = conn.dialect.name
    if isinstance(statement, Compiled):
        sql, args = statement.sql, statement.args(params)
    else:
        compiled = statement.compile(dialect=conn.dialect)
        sql = str(compiled)
        values = {name: params.get(name, value) for name, value in compiled.params.items()}
        args = (
            tuple(values[name] for name in compiled.positiontup) if compiled.positiontup else values
        )
    result = await conn.exec_driver_sql(_EXPLAIN.get(dialect, "EXPLAIN ") + sql, args)
    return [_plan_line(dialect, list(result.keys()), row) for row in result.all()]


async def explain_plans(impl: Impl, ds: DataSet) -> list[tuple[str, str, str]]:
    """(label, SQL, plan) for each read and pop statement on ``impl``'s copy of ``ds``."""
    prefix = ds.prefix(impl)
    tables = lattice_tables(f"{prefix}_sessions", f"{prefix}_messages")
    params: dict[str, Any] = {"sid": BIG_SESSION, "lim": 20, "token": "0" * 32, "n": 0}
    out = []
    for label, statement in session_statements(impl.engine, tables):
        async with impl.engine.connect() as conn:
            plan = await statement_plan(conn, statement, params)
            await conn.rollback()
        sql = (
            statement.sql
            if isinstance(statement, Compiled)
            else str(statement.compile(dialect=impl.engine.dialect))
        )
        out.append((label, sql, "\n".join(plan)))
    return out


def _plan_line(dialect: str, columns: list[str], row: Any) -> str:
    if dialect == "postgresql":
        return str(row[0])
    if dialect == "sqlite":
        return str(row[3])  # (id, parent, notused, detail)
    return ", ".join(f"{c}={v}" for c, v in zip(columns, row, strict=False) if v is not None)
