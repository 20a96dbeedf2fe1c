"""Appends per second and latency through one Galera node vs all three.

Starts a private cluster (``cluster/galera.py``), runs the same load twice,
once with every writer on node 1 and once with the writers spread over the
three nodes, then stops the cluster. Each writer appends batches of two
items with ``add_items``, either to a session of its own (no conflicts) or
all to one session (certification conflicts across nodes, retried).

    .venv/bin/python cluster/galera_bench.py [--seconds 8] [--writers 12]

The numbers in docs/scale.md come from this script.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.galera import GaleraCluster

from lattice import SQLAlchemySession
from lattice.engines import make_engine
from lattice.schema import lattice_tables


async def run_load(
    urls: list[str], writers: int, seconds: float, shared: bool, tag: str
) -> tuple[float, float, float, int]:
    """(appends/s, p50 ms, p99 ms, errors) for ``writers`` spread round-robin over ``urls``."""
    engines = [make_engine(url) for url in urls]
    tables = lattice_tables(f"bench_sessions_{tag}", f"bench_messages_{tag}")
    async with engines[0].begin() as conn:
        await conn.run_sync(tables.metadata.create_all)
    await asyncio.sleep(0.5)  # the DDL reaches the other nodes
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def writer(number: int) -> None:
        nonlocal errors
        session = SQLAlchemySession(
            "shared" if shared else f"w{number}",
            engine=engines[number % len(engines)],
            sessions_table=tables.sessions.name,
            messages_table=tables.messages.name,
        )
        n = 0
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                await session.add_items([{"w": number, "n": n}, {"w": number, "n": n + 1}])
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            n += 2

    began = time.monotonic()
    try:
        await asyncio.gather(*(writer(w) for w in range(writers)))
        elapsed = time.monotonic() - began
        async with engines[0].begin() as conn:
            await conn.run_sync(tables.metadata.drop_all)
    finally:
        for engine in engines:
            await engine.dispose()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1e3, p99 * 1e3, errors


async def main(seconds: float, writers: int, rounds: int) -> None:
    cluster = GaleraCluster()
    await asyncio.to_thread(cluster.start)
    try:
        one = [cluster.url(1)]
        three = [cluster.url(n) for n in (1, 2, 3)]
        print(f"{writers} writers, {seconds:.0f} s per run, batches of 2 items, aiomysql")
        print(f"{'load':<34} {'appends/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for round_ in range(rounds):
            for shared in (False, True):
                for name, urls in (("one node", one), ("three nodes", three)):
                    tag = f"{round_}{int(shared)}{len(urls)}"
                    rate, p50, p99, errors = await run_load(urls, writers, seconds, shared, tag)
                    what = f"{name}, {'one shared session' if shared else 'own sessions'}"
                    print(f"{what:<34} {rate:>10.0f} {p50:>8.1f} {p99:>8.1f} {errors:>7}")
    finally:
        await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--writers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.writers, args.rounds))
