"""Appends/s and latency on private PostgreSQL clusters: what the synchronous standby costs.

Starts (ports 55420-55422 and 55430-55432, fsync on) a primary alone and a
primary with a synchronous hot standby and PgBouncer, then runs rounds of
concurrent writers (each its own session, ``add_items`` of two items per
call) on each configuration, interleaved, and prints appends/s and the
median and p99 latency per call (median of the rounds)::

    .venv/bin/python cluster/pg_bench.py [seconds-per-round] [rounds]

Numbers in docs/scale.md come from this script.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.pg import PgCluster

from lattice import SessionStore

WRITERS = (1, 16)


async def _round(url: str, writers: int, seconds: float) -> tuple[float, float, float]:
    """(appends/s, median ms, p99 ms) of ``writers`` concurrent sessions for ``seconds``."""
    tag = uuid.uuid4().hex[:8]
    async with SessionStore.from_url(
        url, create_tables=True, sessions_table=f"b{tag}_s", messages_table=f"b{tag}_m"
    ) as store:
        await store.session("warm").add_items([{"w": 1}])
        latencies: list[float] = []
        stop = time.monotonic() + seconds

        async def write(n: int) -> None:
            session = store.session(f"w{n}")
            while time.monotonic() < stop:
                started = time.perf_counter()
                await session.add_items([{"role": "user", "content": "x" * 200}, {"n": n}])
                latencies.append(time.perf_counter() - started)

        began = time.monotonic()
        await asyncio.gather(*(write(n) for n in range(writers)))
        elapsed = time.monotonic() - began
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1e3, p99 * 1e3


async def _main(seconds: float, rounds: int) -> None:
    alone = PgCluster(55420, standby=False, pgbouncer=False, fsync=True)
    synced = PgCluster(55430, standby=True, synchronous=True, pgbouncer=True, fsync=True)
    try:
        await asyncio.gather(asyncio.to_thread(alone.start), asyncio.to_thread(synced.start))
        configs = {
            "primary alone": alone.primary_url(),
            "primary + synchronous standby": synced.primary_url(),
            "same, through PgBouncer (transaction mode)": (
                synced.bouncer_url() + "?statement_cache_size=0"
            ),
        }
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for _ in range(rounds):
            for writers in WRITERS:
                for name, url in configs.items():
                    results.setdefault((name, writers), []).append(
                        await _round(url, writers, seconds)
                    )
        print(f"{'configuration':45} {'writers':>7} {'appends/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for (name, writers), runs in results.items():
            rate, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{name:45} {writers:7} {rate:10.0f} {p50:8.2f} {p99:8.2f}")
    finally:
        alone.stop()
        synced.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(_main(float(args[0]) if args else 5.0, int(args[1]) if len(args) > 1 else 3))
