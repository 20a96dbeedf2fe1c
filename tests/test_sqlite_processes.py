"""SQLite files shared by several processes, and the bounded wait for the write lock.

* Several processes append to and pop from one file at the same moment:
  nothing is lost, nothing is handed out twice, batches stay whole.
* A writer blocked by another connection's write lock waits the busy
  timeout (``engines.SQLITE_BUSY_TIMEOUT_MS``, 5 s), then gets
  ``lattice.LockTimeoutError`` ("database is locked" chained); nothing of its
  batch is stored, and reads keep working meanwhile (WAL).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from lattice import LockTimeoutError, SQLiteSession
from lattice.engines import SQLITE_BUSY_TIMEOUT_MS, dispose_engines

PROCESSES = 4
BATCHES = 30


async def _work(path: str, worker: int, shared: str) -> list[str]:
    """Append batches to a private and a shared session; pop from the shared one."""
    mine = SQLiteSession(f"proc-{worker}", path)
    common = SQLiteSession(shared, path)
    popped: list[str] = []
    try:
        for b in range(BATCHES):
            await mine.add_items([{"id": f"{worker}:{b}:{i}"} for i in range(3)])
            await common.add_items([{"id": f"{worker}:{b}:{i}"} for i in range(4)])
            if b % 3 == 0:
                item = await common.pop_item()
                if item is not None:
                    popped.append(item["id"])
    finally:
        await dispose_engines()
    return popped


def _process_main(path: str, worker: int, shared: str, out: Any) -> None:
    out.put((worker, asyncio.run(_work(path, worker, shared))))


def _read(path: Path, session_id: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT message_data FROM agent_messages WHERE session_id = ? ORDER BY id",
            (session_id,),
        ).fetchall()
    return [json.loads(row[0])["id"] for row in rows]


async def test_processes_writing_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    # Create the schema first, so the processes race on data, not on DDL.
    await SQLiteSession("setup", str(path)).get_items()
    await dispose_engines()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [
        context.Process(target=_process_main, args=(str(path), w, "shared", out))
        for w in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    for worker in range(PROCESSES):
        expected = [f"{worker}:{b}:{i}" for b in range(BATCHES) for i in range(3)]
        assert _read(path, f"proc-{worker}") == expected
    stored = _read(path, "shared")
    popped = [item for got in results.values() for item in got]
    assert len(set(popped)) == len(popped), "an item was popped twice"
    assert not set(popped) & set(stored), "a popped item is still stored"
    written = {f"{w}:{b}:{i}" for w in range(PROCESSES) for b in range(BATCHES) for i in range(4)}
    assert set(stored) | set(popped) == written
    assert len(stored) + len(popped) == len(written)
    # Batches stay contiguous and in order (a batch may have lost its newest items to pops).
    keys = [item.rsplit(":", 1)[0] for item in stored]
    runs = [k for n, k in enumerate(keys) if n == 0 or keys[n - 1] != k]
    assert len(runs) == len(set(runs)), "a batch is interleaved with another"


async def test_locked_database_raises_lock_timeout_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    session = SQLiteSession("locked", str(path))
    await session.add_items([{"before": 1}])
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        assert await session.get_items() == [{"before": 1}], "WAL: readers are not blocked"
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match="'locked' stayed locked") as info:
            await session.add_items([{"blocked": 1}, {"blocked": 2}])
        assert isinstance(info.value.__cause__, OperationalError)
        assert "database is locked" in str(info.value.__cause__)
        waited = time.monotonic() - started
        # A lower bound only: the writer waited the documented time before giving up.
        assert waited >= SQLITE_BUSY_TIMEOUT_MS / 1000 * 0.95, waited
    finally:
        blocker.rollback()
        blocker.close()
    assert await session.get_items() == [{"before": 1}]
    await session.add_items([{"after": 1}])
    assert await session.get_items() == [{"before": 1}, {"after": 1}]
    await dispose_engines()
