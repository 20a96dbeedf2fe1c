"""Plain vs hash-partitioned ``agent_messages`` on PostgreSQL: a session's calls, per layout.

Each layout gets a throwaway database (``lattice db upgrade --partitions N``,
dropped at the end), the same sessions and items, then rounds of
``get_items(limit=20)``, ``add_items`` (2 items) and ``pop_item`` calls, the
layouts interleaved and their order rotated each round so a busy machine
weighs on all alike. Prints the median time per call and its ratio to the
plain table.

    python -m benchmarks.partitions_bench --url postgresql+asyncpg://root@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from lattice import SQLAlchemySession, migrations
from lattice.engines import make_engine

OPS = ("read", "append", "pop")


async def _admin(url: str, sql: str) -> None:
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await admin.dispose()


async def _round(engine: Any, sessions: int, calls: int) -> dict[str, float]:
    """Milliseconds per call of each operation, over ``calls`` calls."""
    handles = [SQLAlchemySession(f"s{n}", engine=engine) for n in range(sessions)]
    out = {}
    start = time.perf_counter()
    for k in range(calls):
        await handles[k % sessions].get_items(limit=20)
    out["read"] = (time.perf_counter() - start) / calls * 1e3
    start = time.perf_counter()
    for k in range(calls):
        await handles[k % sessions].add_items([{"a": k}, {"b": k}])
    out["append"] = (time.perf_counter() - start) / calls * 1e3
    start = time.perf_counter()
    for k in range(calls):
        await handles[k % sessions].pop_item()
    out["pop"] = (time.perf_counter() - start) / calls * 1e3
    return out


async def measure(
    url: str,
    counts: tuple[int, ...] = (0, 4, 16, 64),
    *,
    sessions: int = 200,
    items: int = 50,
    rounds: int = 15,
    calls: int = 100,
    custom_plans: bool = False,
) -> dict[int, dict[str, float]]:
    """Median milliseconds per call, per partition count (0: the plain table).

    ``custom_plans``: the sessions' connections set ``plan_cache_mode =
    force_custom_plan`` (asyncpg), so no prepared statement runs a generic plan.
    """
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"server_settings": {"plan_cache_mode": "force_custom_plan"}}}
        if custom_plans
        else {}
    )
    tag = uuid.uuid4().hex[:8]
    names = {n: f"lattice_partbench_{tag}_{n}" for n in counts}
    engines: dict[int, Any] = {}
    try:
        for n, name in names.items():
            await _admin(url, f"CREATE DATABASE {name}")
            db_url = make_url(url).set(database=name)
            await migrations.upgrade(db_url, partitions=n or None)
            engines[n] = make_engine(db_url, **engine_kwargs)
            for s in range(sessions):
                await SQLAlchemySession(f"s{s}", engine=engines[n]).add_items(
                    [{"i": i, "pad": "x" * 200} for i in range(items)]
                )
        samples: dict[int, dict[str, list[float]]] = {n: {op: [] for op in OPS} for n in counts}
        for r in range(rounds):
            order = list(counts[r % len(counts) :] + counts[: r % len(counts)])
            for n in order:
                for op, ms in (await _round(engines[n], sessions, calls)).items():
                    samples[n][op].append(ms)
        return {
            n: {op: statistics.median(v) for op, v in ops.items()} for n, ops in samples.items()
        }
    finally:
        for engine in engines.values():
            await engine.dispose()
        for name in names.values():
            await _admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def report(results: dict[int, dict[str, float]]) -> str:
    """A Markdown table: median ms per call and the ratio to the plain table."""
    plain = results.get(0)
    lines = ["| layout | " + " | ".join(OPS) + " |", "| --- |" + " --- |" * len(OPS)]
    for n, ops in results.items():
        cells = []
        for op in OPS:
            ratio = f" ({ops[op] / plain[op]:.2f}x)" if plain and n else ""
            cells.append(f"{ops[op]:.3f} ms{ratio}")
        label = "plain table" if n == 0 else f"{n} partitions"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", required=True, help="a PostgreSQL URL (databases are made beside it)"
    )
    parser.add_argument(
        "--counts", default="0,4,16,64", help="partition counts; 0 is the plain table"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument(
        "--custom-plans", action="store_true", help="plan_cache_mode=force_custom_plan (asyncpg)"
    )
    args = parser.parse_args()
    counts = tuple(int(c) for c in args.counts.split(","))
    results = asyncio.run(
        measure(
            args.url,
            counts,
            rounds=args.rounds,
            calls=args.calls,
            custom_plans=args.custom_plans,
        )
    )
    print(report(results))


if __name__ == "__main__":
    main()
