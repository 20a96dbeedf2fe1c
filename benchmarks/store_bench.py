"""SessionStore at scale: listing cost against catalogue size, and export memory.

    python -m benchmarks.store_bench [--url URL] [--only list|export]
        [--sizes 100,100000] [--items 1000000] [--keep]

``list``
    Builds catalogues of each size (default 100 and 100,000 sessions, on
    tables of their own), then times ``list_sessions`` pages: the first page,
    a page deep inside (by cursor), a page of one owner and a page of one
    owner deep inside. With the ``(updated_at, session_id)`` and ``(owner,
    updated_at, session_id)`` indexes a page costs about the same at every
    size; the last column shows the ratio between the largest and smallest.
``export``
    Stores ``--items`` items (default 1,000,000, 200 bytes each, across 1,000
    sessions with one of 100,000 items), then exports them to a file in a
    fresh process and reports that process's peak RSS (``VmHWM``). The
    target is under 300 MB.

The default URL is a SQLite file in a temporary directory; pass
``--url postgresql+asyncpg://...`` or ``--url mysql+aiomysql://...`` for the
servers. Tables are named ``bench_store_*`` and dropped afterwards (unless
``--keep``), so the benchmark never touches Lattice's default tables.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore
from lattice.engines import make_engine
from lattice.schema import LatticeTables, lattice_tables

PAGE = 50
# Ten owners: at 100 sessions each has 10, so owner pages are 10 long at every size.
OWNER_PAGE = 10
REPS = 30
OWNERS = 10
_INSERT_CHUNK = 5000
BASE_TIME = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _tables(tag: str) -> LatticeTables:
    return lattice_tables(f"bench_store_{tag}_sessions", f"bench_store_{tag}_messages")


async def _recreate(engine: AsyncEngine, tables: LatticeTables) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(tables.metadata.drop_all)
        await conn.run_sync(tables.metadata.create_all)


async def _drop(engine: AsyncEngine, tables: LatticeTables) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(tables.metadata.drop_all)


async def _fill_catalogue(engine: AsyncEngine, tables: LatticeTables, size: int) -> None:
    s = tables.sessions
    rows = []
    for n in range(size):
        owner = f"user{n % OWNERS}"
        rows.append(
            {
                "session_id": f"session-{n:07d}",
                "created_at": BASE_TIME,
                "updated_at": BASE_TIME + dt.timedelta(seconds=n),
                "item_count": 10,
                "write_tokens": "",
                "session_metadata": json.dumps({"owner": owner, "title": f"chat {n}"}),
                "owner": owner,
            }
        )
        if len(rows) == _INSERT_CHUNK or n == size - 1:
            async with engine.begin() as conn:
                await conn.execute(insert(s), rows)
            rows = []


async def _time_ms(make_page: object, reps: int = REPS) -> float:
    timings = []
    for _ in range(reps):
        start = time.perf_counter()
        await make_page()  # type: ignore[operator]
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


async def bench_list(url: str, sizes: list[int], keep: bool) -> list[dict[str, object]]:
    engine = make_engine(url)
    results = []
    try:
        for size in sizes:
            tables = _tables(f"l{size}")
            await _recreate(engine, tables)
            await _fill_catalogue(engine, tables, size)
            store = SessionStore(
                engine, sessions_table=tables.sessions.name, messages_table=tables.messages.name
            )
            # A cursor half-way down the catalogue (and half-way down one owner's list).
            deep_cursor = await _cursor_at(store, size // 2, owner=None)
            owner_cursor = await _cursor_at(store, size // OWNERS // 2, owner="user3")
            row: dict[str, object] = {"sessions": size}
            row["first page ms"] = await _time_ms(lambda s=store: s.list_sessions(limit=PAGE))
            row["deep page ms"] = await _time_ms(
                lambda s=store, c=deep_cursor: s.list_sessions(limit=PAGE, cursor=c)
            )
            row["owner page ms"] = await _time_ms(
                lambda s=store: s.list_sessions(limit=OWNER_PAGE, owner="user3")
            )
            row["owner deep page ms"] = await _time_ms(
                lambda s=store, c=owner_cursor: s.list_sessions(
                    limit=OWNER_PAGE, owner="user3", cursor=c
                )
            )
            results.append(row)
            if not keep:
                await _drop(engine, tables)
    finally:
        await engine.dispose()
    return results


async def _cursor_at(store: SessionStore, position: int, owner: str | None) -> str | None:
    """The cursor after roughly ``position`` sessions, found by paging (not timed)."""
    cursor = None
    seen = 0
    while seen < position:
        step = min(1000, position - seen)
        page = await store.list_sessions(limit=step, owner=owner, cursor=cursor)
        if page.next_cursor is None:
            break
        cursor, seen = page.next_cursor, seen + len(page)
    return cursor


async def _fill_items(engine: AsyncEngine, tables: LatticeTables, items: int) -> None:
    s, m = tables.sessions, tables.messages
    sessions = 1000
    big = min(items, 100_000)
    per_session = max(-(-(items - big) // (sessions - 1)), 0)
    counts = {"big": big, **{f"chat-{n:04d}": per_session for n in range(sessions - 1)}}
    async with engine.begin() as conn:
        await conn.execute(
            insert(s),
            [
                {
                    "session_id": sid,
                    "created_at": BASE_TIME,
                    "updated_at": BASE_TIME,
                    "item_count": count,
                    "write_tokens": "",
                }
                for sid, count in counts.items()
            ],
        )
    payload = "x" * 160
    for sid, count in counts.items():
        for start in range(0, count, _INSERT_CHUNK):
            rows = [
                {
                    "session_id": sid,
                    "message_data": f'{{"role":"user","n":{k},"content":"{payload}"}}',
                    "created_at": BASE_TIME,
                }
                for k in range(start, min(start + _INSERT_CHUNK, count))
            ]
            async with engine.begin() as conn:
                await conn.execute(insert(m), rows)


async def bench_export(url: str, items: int, keep: bool) -> dict[str, object]:
    engine = make_engine(url)
    tables = _tables("export")
    try:
        await _recreate(engine, tables)
        start = time.perf_counter()
        await _fill_items(engine, tables, items)
        fill_s = time.perf_counter() - start
    finally:
        await engine.dispose()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "export.jsonl"
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.store_bench", "--_export-child", url, str(target)],
            check=True,
            capture_output=True,
            text=True,
        )
        measured = json.loads(child.stdout)
    if not keep:
        engine = make_engine(url)
        try:
            await _drop(engine, tables)
        finally:
            await engine.dispose()
    return {"items": items, "fill s": round(fill_s, 1), **measured}


def _kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def _export_child(url: str, target: str) -> dict[str, object]:
    tables = _tables("export")
    async with SessionStore.from_url(
        url, sessions_table=tables.sessions.name, messages_table=tables.messages.name
    ) as store:
        await store.count()  # connect before measuring the baseline
        before = _kib("VmRSS")
        start = time.perf_counter()
        result = await store.export_jsonl(target)
        seconds = time.perf_counter() - start
    return {
        "exported items": result.items,
        "file MB": round(os.path.getsize(target) / 1e6, 1),
        "export s": round(seconds, 1),
        "RSS before MiB": round(before / 1024, 1),
        "peak RSS MiB": round(_kib("VmHWM") / 1024, 1),
    }


def _print_rows(rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    print("  ".join(f"{k:>18}" for k in keys))
    for row in rows:
        cells = [f"{v:>18.2f}" if isinstance(v, float) else f"{v!s:>18}" for v in row.values()]
        print("  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_bench")
    parser.add_argument("--url", default=None, help="database URL (default: a SQLite temp file)")
    parser.add_argument("--only", choices=["list", "export"], default=None)
    parser.add_argument("--sizes", default="100,100000", help="catalogue sizes for 'list'")
    parser.add_argument("--items", type=int, default=1_000_000, help="items for 'export'")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark tables")
    parser.add_argument("--_export-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._export_child:
        print(json.dumps(asyncio.run(_export_child(*args._export_child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite+aiosqlite:///{tmp}/store_bench.db"
        print(f"# SessionStore benchmark on {url.split('://')[0]}")
        if args.only in (None, "list"):
            sizes = [int(size) for size in args.sizes.split(",")]
            rows = asyncio.run(bench_list(url, sizes, args.keep))
            print(f"\n## list_sessions: pages of {PAGE} (owner: {OWNER_PAGE}), median of {REPS}")
            _print_rows(rows)
            first, last = rows[0], rows[-1]
            ratios = {
                k: round(float(last[k]) / float(first[k]), 2)  # type: ignore[arg-type]
                for k in first
                if k.endswith("ms")
            }
            print(f"cost at {last['sessions']} / cost at {first['sessions']}: {ratios}")
        if args.only in (None, "export"):
            result = asyncio.run(bench_export(url, args.items, args.keep))
            print("\n## export_jsonl in a fresh process")
            _print_rows([result])
            verdict = "under" if float(result["peak RSS MiB"]) < 300 else "OVER"  # type: ignore[arg-type]
            print(f"peak RSS {result['peak RSS MiB']} MiB: {verdict} the 300 MB target")


if __name__ == "__main__":
    main()
