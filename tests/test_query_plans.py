"""Reads and pops use only the ``(session_id, id)`` index, whatever the layout and statistics.

Issue 14: ``SELECT ... WHERE session_id = $1 ORDER BY id DESC LIMIT $2`` can be
planned as a backward scan of the primary key with a filter, which reads
every newer row of other sessions before it finds the session's. A session
resumed after a million rows of other traffic would read them all. The
layout here is the bad case: a session (``old``) whose items all sit behind
other sessions' rows, and one (``big``) interleaved with them; statistics are
then made to favour the primary key (SQLite: ``sqlite_stat1`` claims every
row matches; PostgreSQL: one distinct session id, dearer random reads, and
the generic plans asyncpg's prepared statements use). The assertions are on
plans, never on time: every scan of the messages table must go through the
composite index (or fetch one row by its key), with no sort.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.explain import session_statements, statement_plan
from lattice.engines import make_engine
from lattice.schema import LatticeTables
from tests.conftest import backend_url, temporary_tables

pytestmark = pytest.mark.only_backends("sqlite_file", "postgres", "mysql")

OTHERS = 6000  # rows of other sessions after the resumed session's items
OLD_ITEMS = 2000  # a long session: a quarter of the table, all of it before the rest


async def _fill(engine: AsyncEngine, tables: LatticeTables) -> None:
    s, m = tables.sessions, tables.messages
    others = [f"s{i}" for i in range(40)]
    rows = [{"session_id": "old", "message_data": f'{{"n":{i}}}'} for i in range(OLD_ITEMS)]
    for n in range(OTHERS):
        sid = "big" if n % 4 == 0 else others[n % len(others)]
        rows.append({"session_id": sid, "message_data": f'{{"n":{n}}}'})
    async with engine.begin() as conn:
        await conn.execute(insert(s), [{"session_id": sid} for sid in ("old", "big", *others)])
        await conn.execute(insert(m), rows)


async def _favour_primary_key(engine: AsyncEngine, tables: LatticeTables) -> None:
    """Statistics under which a plain ``ORDER BY id DESC`` takes the primary key."""
    m = tables.messages.name
    dialect = engine.dialect.name
    async with engine.connect() as conn:
        if dialect == "postgresql":
            # Plain statistics: "old" is a quarter of the rows, so a backward
            # scan of the key looks like it finds 20 of them in 80 rows.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"ANALYZE {m}"))
        elif dialect == "sqlite":
            # Statistics gone stale since the file held one session.
            await conn.execute(text("ANALYZE"))
            total = OLD_ITEMS + OTHERS
            await conn.execute(
                text("UPDATE sqlite_stat1 SET stat = :stat WHERE tbl = :t AND idx IS NOT NULL"),
                {"stat": f"{total} {total} 1", "t": m},
            )
            await conn.commit()
        else:
            await conn.execute(text(f"ANALYZE TABLE {m}"))
            await conn.commit()


@pytest.fixture
async def laid_out(
    backend: str, tmp_path: Path
) -> AsyncIterator[tuple[AsyncEngine, LatticeTables]]:
    url = backend_url(backend, tmp_path)
    builder = make_engine(url)
    try:
        async with temporary_tables(builder, prefix="qp") as tables:
            await _fill(builder, tables)
            await _favour_primary_key(builder, tables)
            # A new engine: SQLite connections read sqlite_stat1 when they open.
            engine = make_engine(url)
            try:
                yield engine, tables
            finally:
                await engine.dispose()
    finally:
        await builder.dispose()


def _check(dialect: str, messages: str, index: str, label: str, plan: list[str]) -> None:
    shown = "\n".join(plan)
    # A whole-session read may sort the session's rows (it reads them all anyway).
    whole = label.startswith("c:")
    if dialect == "postgresql":
        scans = [n for n, line in enumerate(plan) if re.search(rf"Scan.* on {messages}\b", line)]
        assert scans, (label, shown)
        for n in scans:
            line = plan[n]
            # The composite index; a bitmap heap scan whose bitmap comes from it
            # (the "Bitmap Index Scan" line is checked below); or the one row a
            # DELETE removes, fetched by its key.
            by_key = f"using {messages}_pkey on" in line and "Backward" not in line
            by_key = by_key and re.search(r"Index Cond: \(id = \$\d+\)", plan[n + 1]) is not None
            bitmap = whole and "Bitmap Heap Scan" in line
            assert f"using {index} on" in line or by_key or bitmap, (label, shown)
        bitmaps = [line for line in plan if "Bitmap Index Scan" in line]
        assert all(f"on {index}" in line for line in bitmaps), (label, shown)
        assert whole or "Sort" not in shown, (label, shown)
    elif dialect == "sqlite":
        scans = [line for line in plan if re.search(rf"\b{messages}\b", line)]
        assert scans, (label, shown)
        for line in scans:
            by_index = f"USING INDEX {index}" in line or f"USING COVERING INDEX {index}" in line
            by_key = "USING INTEGER PRIMARY KEY (rowid=?)" in line
            assert line.startswith("SEARCH") and (by_index or by_key), (label, shown)
        assert "TEMP B-TREE" not in shown, (label, shown)
    else:
        scans = [line for line in plan if f"table={messages}," in line]
        assert scans, (label, shown)
        for line in scans:
            assert f"key={index}," in line, (label, shown)
            assert "filesort" not in line, (label, shown)


@pytest.mark.parametrize("sid", ["old", "big"])
async def test_reads_and_pops_use_the_session_index(
    laid_out: tuple[AsyncEngine, LatticeTables], sid: str
) -> None:
    engine, tables = laid_out
    messages = tables.messages.name
    index = f"ix_{messages}_session_id_id"
    for label, statement in session_statements(engine, tables):
        async with engine.connect() as conn:
            plan = await statement_plan(conn, statement, {"sid": sid, "lim": 20, "token": "0" * 32})
            await conn.rollback()
        _check(engine.dialect.name, messages, index, label, plan)
