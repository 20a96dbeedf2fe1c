"""EXPLAIN of the statements Lattice runs for d (latest 20) and h (pop), on a data set."""

from __future__ import annotations

from typing import Any

from lattice.dialects import statements
from lattice.drivers import Stmt, driver_for
from lattice.drivers.compiled import Compiled, compiled_statements
from lattice.engines import engine_state
from lattice.schema import lattice_tables

from .datasets import BIG_SESSION, DataSet
from .impls import Impl

__all__ = ["explain_plans"]


def _pop_statements(stmts: Any, engine: Any, tables: Any) -> list[tuple[str, Any]]:
    driver = driver_for(engine, engine_state(engine))
    if driver.pop_in_one_statement:
        # The lock and the delete in one statement (driver SQL, ``Stmt.POP``).
        pop = compiled_statements(tables, engine.dialect, driver)[Stmt.POP]
        return [("h: pop_item (lock and delete)", pop)]
    if stmts.delete_newest_returning is not None:
        return [("h: pop_item", stmts.delete_newest_returning)]
    return [("h: pop_item (newest row)", stmts.select_newest)]


async def explain_plans(impl: Impl, ds: DataSet) -> list[tuple[str, str, str]]:
    """(label, SQL, plan) for each statement of d and h on ``impl``'s copy of ``ds``."""
    prefix = ds.prefix(impl)
    tables = lattice_tables(f"{prefix}_sessions", f"{prefix}_messages")
    engine = impl.engine
    stmts = statements(tables, engine.dialect)
    dialect = engine.dialect.name
    prefix_sql = {
        "postgresql": "EXPLAIN (COSTS OFF) ",
        "sqlite": "EXPLAIN QUERY PLAN ",
    }.get(dialect, "EXPLAIN ")
    params: dict[str, Any] = {
        "sid": BIG_SESSION.encode() if dialect in ("mysql", "mariadb") else BIG_SESSION,
        "lim": 20,
        "now": None,
        "token": "0" * 32,
        "n": 0,
    }
    out = []
    plan_of = [("d: get_items(limit=20)", stmts.select_latest)]
    for label, stmt in [*plan_of, *_pop_statements(stmts, engine, tables)]:
        if isinstance(stmt, Compiled):
            sql = stmt.sql
            args: Any = tuple(params.get(name, default) for name, _, default in stmt.binds)
        else:
            compiled = stmt.compile(dialect=engine.dialect)
            sql = str(compiled)
            args = (
                tuple(params.get(name, compiled.params.get(name)) for name in compiled.positiontup)
                if compiled.positiontup
                else {name: params.get(name, value) for name, value in compiled.params.items()}
            )
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(prefix_sql + sql, args)
            rows = [_plan_line(dialect, list(result.keys()), row) for row in result.all()]
            await conn.rollback()
        out.append((label, sql, "\n".join(rows)))
    return out


def _plan_line(dialect: str, columns: list[str], row: Any) -> str:
    if dialect == "postgresql":
        return str(row[0])
    if dialect == "sqlite":
        return str(row[3])  # (id, parent, notused, detail)
    return ", ".join(f"{c}={v}" for c, v in zip(columns, row, strict=False) if v is not None)
