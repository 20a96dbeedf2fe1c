"""Bulk-built data sets for the read and pop operations, cached between runs.

A data set is ``rows`` items across ``sessions`` sessions, one of which
(``'big'``) holds ``big`` of them, interleaved with the others the way many
conversations write to one table. A *resumed* set puts all of ``'big'``'s
items first, then ``rows - big`` rows of the other sessions' traffic: a
conversation picked up again after a million rows of others' writes, where a
read that scanned the primary key backwards would read them all.

The rows are made by one ``INSERT ... SELECT`` over a number series
(``generate_series`` on PostgreSQL, a recursive CTE on SQLite, a cross join
of digits on MySQL/MariaDB, whose recursive CTEs stop at 1,000 iterations by
default), so 1.1M rows take seconds rather than minutes. A table
``bench_meta`` records what each set was built from (sizes and the tables'
DDL); a run whose sizes and schema match reuses it, anything else rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .impls import Impl

__all__ = ["BIG_SESSION", "DataSet", "ensure_data_set"]

BIG_SESSION = "big"


@dataclass(frozen=True)
class DataSet:
    """``rows`` items across ``sessions`` sessions; session ``'big'`` holds ``big``."""

    name: str
    rows: int
    sessions: int
    big: int
    item_bytes: int = 160
    #: ``'big'``'s items first, then only other sessions' rows.
    resumed: bool = False

    def prefix(self, impl: Impl) -> str:
        return f"{impl.schema}_{self.name}"


def _numbers(dialect: str, count: int) -> str:
    """A subquery yielding ``n`` = 0 .. count - 1."""
    if dialect == "postgresql":
        return f"SELECT n FROM generate_series(0, {count - 1}) AS g(n)"
    if dialect == "sqlite":
        return (
            "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL "
            f"SELECT n + 1 FROM g WHERE n + 1 < {count}) SELECT n FROM g"
        )
    digits = (
        "(SELECT 0 AS d UNION ALL " + " UNION ALL ".join(f"SELECT {i}" for i in range(1, 10)) + ")"
    )
    width = len(str(max(count - 1, 1)))
    terms = " + ".join(f"{10**i} * d{i}.d" for i in range(width))
    joins = " CROSS JOIN ".join(f"{digits} AS d{i}" for i in range(width))
    return f"SELECT n FROM (SELECT {terms} AS n FROM {joins}) AS q WHERE n < {count}"


def _concat(dialect: str, *parts: str) -> str:
    if dialect in ("mysql", "mariadb"):
        return f"CONCAT({', '.join(parts)})"
    return " || ".join(parts)


def _as_text(dialect: str, expr: str) -> str:
    return f"CAST({expr} AS {'CHAR' if dialect in ('mysql', 'mariadb') else 'TEXT'})"


def _timestamp(dialect: str, tz: bool) -> str:
    """``2025-01-01`` plus ``n`` seconds, as the column type expects it."""
    if dialect == "postgresql":
        kind = "TIMESTAMPTZ '2025-01-01 00:00:00+00'" if tz else "TIMESTAMP '2025-01-01 00:00:00'"
        return f"{kind} + n * INTERVAL '1 second'"
    if dialect == "sqlite":
        return "datetime('2025-01-01', '+' || n || ' seconds')"
    return "TIMESTAMPADD(SECOND, n, '2025-01-01')"


def _insert_sql(dialect: str, sessions: str, messages: str, ds: DataSet, tz: bool) -> list[str]:
    """The statements that fill ``ds`` (bound parameter ``pad``: the item padding)."""
    every = max(ds.rows // ds.big, 1)
    others = max(ds.sessions - 1, 1)
    mine = f"n < {ds.big}" if ds.resumed else f"n % {every} = 0"
    sid = (
        f"CASE WHEN {mine} THEN '{BIG_SESSION}' ELSE "
        + _concat(dialect, "'s'", _as_text(dialect, f"n % {others}"))
        + " END"
    )
    data = _concat(
        dialect,
        '\'{"type":"message","role":"user","content":"item \'',
        _as_text(dialect, "n"),
        "' '",
        ":pad",
        "'\"}'",
    )
    statements = [f"INSERT INTO {sessions} (session_id) VALUES ('{BIG_SESSION}')"]
    if ds.sessions > 1:
        statements.append(
            f"INSERT INTO {sessions} (session_id) "
            "SELECT " + _concat(dialect, "'s'", _as_text(dialect, "n")) + " "
            f"FROM ({_numbers(dialect, others)}) AS ns"
        )
    statements.append(
        f"INSERT INTO {messages} (session_id, message_data, created_at) "
        f"SELECT {sid}, {data}, {_timestamp(dialect, tz)} "
        f"FROM ({_numbers(dialect, ds.rows)}) AS ns ORDER BY n"
    )
    return statements


async def _meta_spec(engine: AsyncEngine, key: str) -> str | None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_meta "
                "(name VARCHAR(100) PRIMARY KEY, spec VARCHAR(100) NOT NULL)"
            )
        )
        row = (
            await conn.execute(text("SELECT spec FROM bench_meta WHERE name = :k"), {"k": key})
        ).first()
    return None if row is None else str(row[0])


async def ensure_data_set(impl: Impl, ds: DataSet, *, rebuild: bool = False) -> bool:
    """Make sure ``ds`` exists in ``impl``'s tables; True if it was (re)built."""
    prefix = ds.prefix(impl)
    engine = impl.engine
    spec = json.dumps({"set": asdict(ds), "ddl": impl.ddl(prefix)}, sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:32]
    if not rebuild and await _meta_spec(engine, prefix) == digest:
        return False
    started = time.perf_counter()
    print(f"  building data set {prefix}: {ds.rows:,} rows ...", file=sys.stderr, flush=True)
    await impl.create_tables(prefix, drop=True)
    dialect = engine.dialect.name
    pad = "x" * max(ds.item_bytes - 60, 1)
    async with engine.begin() as conn:
        for sql in _insert_sql(
            dialect, f"{prefix}_sessions", f"{prefix}_messages", ds, tz=impl.schema == "lr"
        ):
            await conn.execute(text(sql), {"pad": pad} if ":pad" in sql else {})
        await conn.execute(text("DELETE FROM bench_meta WHERE name = :k"), {"k": prefix})
        await conn.execute(
            text("INSERT INTO bench_meta (name, spec) VALUES (:k, :s)"), {"k": prefix, "s": digest}
        )
    async with engine.connect() as conn:
        if dialect == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"ANALYZE {prefix}_sessions, {prefix}_messages"))
        elif dialect == "sqlite":
            await conn.execute(text("ANALYZE"))
        else:
            await conn.execute(text(f"ANALYZE TABLE {prefix}_sessions, {prefix}_messages"))
        await conn.commit()
    print(f"  built {prefix} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return True
