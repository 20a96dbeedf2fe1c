"""Advanced sessions against plain ones, and branching against the Agents SDK's copy.

    python -m benchmarks.advanced_bench [--url URL] [--turns 50] [--per-turn 200] [--repeat 20]

Stores ``--turns`` batches of ``--per-turn`` items (10,000 by default) in an
advanced and in a plain session, then reports, as medians of ``--repeat``
runs and as ratios advanced/plain: ``get_items(limit=20)``, appending a
two-item turn, and branching from the last turn (rows written counted, and
the Agents SDK's ``AdvancedSQLiteSession`` timed branching the same history
in a SQLite file, which copies one row per item).

The default URL is a SQLite file in a temporary directory. Tables are named
``bench_adv_*`` and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select

from lattice import AdvancedSQLAlchemySession, SQLAlchemySession
from lattice.engines import make_engine
from lattice.schema import lattice_tables
from lattice.schema_advanced import advanced_tables


def _history(turns: int, per_turn: int) -> list[list[dict[str, Any]]]:
    return [
        [{"role": "user", "content": f"question {turn}"}]
        + [{"role": "assistant", "content": "x" * 200} for _ in range(per_turn - 1)]
        for turn in range(turns)
    ]


async def _median_ms(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


async def _sdk_branch_ms(history: list[list[dict[str, Any]]]) -> float | None:
    try:
        from agents.extensions.memory import AdvancedSQLiteSession
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        sdk = AdvancedSQLiteSession(
            session_id="b", db_path=os.path.join(folder, "sdk.db"), create_tables=True
        )
        for batch in history:
            await sdk.add_items(batch)  # type: ignore[arg-type]
        start = time.perf_counter()
        await sdk.create_branch_from_turn(len(history), "late")
        elapsed = 1000 * (time.perf_counter() - start)
        sdk.close()
    return elapsed


async def run(url: str, turns: int, per_turn: int, repeat: int) -> dict[str, Any]:
    engine = make_engine(url)
    tag = uuid.uuid4().hex[:8]
    tables = lattice_tables(f"bench_adv_{tag}_s", f"bench_adv_{tag}_m")
    async with engine.begin() as conn:
        await conn.run_sync(tables.metadata.create_all)
    try:
        names = {"sessions_table": tables.sessions.name, "messages_table": tables.messages.name}
        advanced = AdvancedSQLAlchemySession("adv", engine=engine, **names)
        plain = SQLAlchemySession("plain", engine=engine, **names)
        history = _history(turns, per_turn)
        for batch in history:
            await advanced.add_items(batch)  # type: ignore[arg-type]
            await plain.add_items(batch)  # type: ignore[arg-type]
        turn: list[Any] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        found: dict[str, Any] = {"database": engine.dialect.name, "items": turns * per_turn}
        for name, session in (("advanced", advanced), ("plain", plain)):
            found[f"get_items(20) {name} ms"] = await _median_ms(
                lambda s=session: s.get_items(limit=20), repeat
            )
        for name, session in (("advanced", advanced), ("plain", plain)):
            found[f"add turn {name} ms"] = await _median_ms(
                lambda s=session: s.add_items(turn), repeat
            )
        segments = advanced_tables(tables).segments
        count = select(func.count()).select_from(segments)
        async with engine.connect() as conn:
            before = (await conn.execute(count)).scalar() or 0
        start = time.perf_counter()
        await advanced.create_branch_from_turn(turns, "late")
        found["branch ms"] = 1000 * (time.perf_counter() - start)
        async with engine.connect() as conn:
            found["branch rows written"] = ((await conn.execute(count)).scalar() or 0) - before + 1
        found["SDK branch ms (SQLite file)"] = await _sdk_branch_ms(history)
        for what in ("get_items(20)", "add turn"):
            found[f"{what} ratio"] = found[f"{what} advanced ms"] / found[f"{what} plain ms"]
        return found
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(tables.metadata.drop_all)
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.advanced_bench")
    parser.add_argument("--url", default=None)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--per-turn", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite+aiosqlite:///{os.path.join(folder, 'bench.db')}"
        found = asyncio.run(run(url, args.turns, args.per_turn, args.repeat))
    for key, value in found.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:32} {shown}")


if __name__ == "__main__":
    main()
