"""``SQLiteSession`` against the Agents SDK's own and raw aiosqlite, on one file, per call.

    python -m benchmarks.sqlite_sessions [--reps 5] [--calls 500] [--impls ...]

The per-call cost of the embedded default, where the database's own work is
smallest: Lattice's ``SQLiteSession`` (``lattice``), Lattice's
``SQLAlchemySession`` from a ``sqlite+aiosqlite`` URL (``lattice_sa``), the
Agents SDK 0.24's ``SQLiteSession`` (``sdk``: ``sqlite3`` in
``asyncio.to_thread``) and raw aiosqlite (``raw``, the same statements as
``python -m benchmarks``' raw SQLite driver), all on files in one temporary
directory, in one process. Each rep runs every operation once per
implementation, rotating the order from rep to rep; the table gives the
median microseconds per call and the median of the per-rep ratios.

Operations: ``a`` add_items of 1 item, ``b`` add_items of 100 items (per
call), ``c`` get_items() of a 1,000-item session, ``d`` get_items(limit=20),
``e`` pop_item.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from lattice import SQLAlchemySession, SQLiteSession
from lattice.engines import dispose_engines

from .impls import RawImpl
from .ops import item

OPS = ("a", "b", "c", "d", "e")
IMPLS = ("lattice", "lattice_sa", "sdk", "raw")


class _Impls:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.raw: RawImpl | None = None

    async def open(self) -> None:
        url = URL.create("sqlite+aiosqlite", database=str(self.dir / "raw.db"))
        self.raw = RawImpl(url)
        await self.raw.create_tables("bench")
        await self.raw.open()

    async def close(self) -> None:
        assert self.raw is not None
        await self.raw.close()
        await dispose_engines()

    def session(self, impl: str) -> Any:
        sid = uuid.uuid4().hex
        if impl == "lattice":
            return SQLiteSession(sid, self.dir / "lattice.db")
        if impl == "lattice_sa":
            url = f"sqlite+aiosqlite:///{self.dir / 'lattice_sa.db'}"
            return SQLAlchemySession.from_url(sid, url=url, create_tables=True)
        if impl == "sdk":
            from agents import SQLiteSession as SdkSQLiteSession

            return SdkSQLiteSession(sid, str(self.dir / "sdk.db"))
        assert self.raw is not None
        return self.raw.session(sid, "bench")


async def _op(op: str, session: Any, calls: int) -> float:
    """Microseconds per call of ``op`` on a fresh ``session``."""
    if op == "b":
        batches = [[item(i * 100 + j) for j in range(100)] for i in range(calls // 10)]
        start = time.perf_counter()
        for batch in batches:
            await session.add_items(batch)
        return (time.perf_counter() - start) / len(batches) * 1e6
    if op == "a":
        items = [item(i) for i in range(calls)]
        start = time.perf_counter()
        for one in items:
            await session.add_items([one])
        return (time.perf_counter() - start) / calls * 1e6
    await session.add_items([item(i) for i in range(1000 if op == "c" else calls)])
    n = calls // 10 if op == "c" else calls
    start = time.perf_counter()
    for _ in range(n):
        if op == "c":
            await session.get_items()
        elif op == "d":
            await session.get_items(limit=20)
        else:
            await session.pop_item()
    return (time.perf_counter() - start) / n * 1e6


async def run(reps: int, calls: int, impls: list[str], ops: list[str]) -> str:
    with tempfile.TemporaryDirectory(prefix="lattice-sqlite-bench-") as tmp:
        runner = _Impls(Path(tmp))
        await runner.open()
        try:
            for impl in impls:  # warm up: tables, engines, first statements
                await _op("d", runner.session(impl), 20)
            times: dict[tuple[str, str], list[float]] = {}
            for rep in range(reps):
                order = impls[rep % len(impls) :] + impls[: rep % len(impls)]
                for op in ops:
                    for impl in order:
                        us = await _op(op, runner.session(impl), calls)
                        times.setdefault((op, impl), []).append(us)
        finally:
            await runner.close()
    pairs = [(i, ref) for i in impls if i.startswith("lattice") for ref in ("sdk", "raw")]
    pairs = [(i, ref) for i, ref in pairs if ref in impls]
    head = [f"{i} µs" for i in impls] + [f"{i}/{ref}" for i, ref in pairs]
    lines = ["| op | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for op in ops:
        cells = [f"{statistics.median(times[op, i]):,.0f}" for i in impls]
        for i, ref in pairs:
            per_rep = [a / b for a, b in zip(times[op, i], times[op, ref], strict=True)]
            cells.append(f"{statistics.median(per_rep):.2f}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args()
    table = asyncio.run(run(args.reps, args.calls, args.impls.split(","), args.ops.split(",")))
    print("Time per call (lower is better); ratios are Lattice's time over the reference's.")
    print(table)


if __name__ == "__main__":
    main()
