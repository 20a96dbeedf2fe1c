"""Load: many concurrent sessions, each turn an append of two items and a windowed read.

``make test`` runs 50 sessions x 10 turns; ``make soak`` (``LATTICE_SOAK=1``)
runs the full 50 x 500 on each server and on a SQLite file. Every read is
checked against what that session wrote, the final histories are checked
item by item, the pool must have no connection checked out, and the
process's memory must stay bounded (RSS growth after a warm-up).
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections import deque
from typing import Any

import psutil
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice.schema import LatticeTables
from tests.conftest import assert_no_checked_out
from tests.reliability import session_on, stored

SOAK = os.environ.get("LATTICE_SOAK") == "1"
SESSIONS = 50
TURNS = 500 if SOAK else 10
# Growth allowed between the warm-up and the end. Measured on `make soak`
# (50 x 500, shared servers): SQLite file 0.5 MiB, PostgreSQL 7.3 MiB,
# MariaDB 0.0 MiB (about 60-100 s per backend), so 64 MiB means a leak, not noise.
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def _turn(index: int, turn: int) -> list[dict[str, Any]]:
    """The two items session ``index`` appends on ``turn``."""
    return [
        {"role": "user", "content": f"s{index} t{turn} question", "turn": turn},
        {"role": "assistant", "content": f"s{index} t{turn} answer " + "x" * 200},
    ]


@pytest.mark.only_backends("sqlite_file", "postgres", "mysql")  # a file and the servers
async def test_concurrent_sessions_keep_exact_histories(
    engine: AsyncEngine, tables: LatticeTables, backend: str
) -> None:
    prefix = uuid.uuid4().hex[:8]
    sessions = [session_on(engine, tables, f"load-{prefix}-{n}") for n in range(SESSIONS)]
    process = psutil.Process()
    warm_up = max(2, TURNS // 10)
    baseline: list[int] = []

    async def conversation(index: int) -> None:
        session = sessions[index]
        # Only the window is kept, so the test's own memory does not grow with turns.
        window: deque[dict[str, Any]] = deque(maxlen=20)
        for turn in range(TURNS):
            pair = _turn(index, turn)
            await session.add_items(pair)
            window.extend(pair)
            assert await session.get_items(limit=20) == list(window)
            if turn == warm_up and index == 0:
                gc.collect()
                baseline.append(process.memory_info().rss)

    await asyncio.gather(*(conversation(i) for i in range(SESSIONS)))
    await assert_no_checked_out(engine)
    gc.collect()
    growth = process.memory_info().rss - baseline[0]
    print(f"{backend}: {SESSIONS}x{TURNS} turns, RSS growth after warm-up {growth / 2**20:.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB over {TURNS} turns"
    for index, session in enumerate(sessions):
        expected = [item for turn in range(TURNS) for item in _turn(index, turn)]
        assert await stored(engine, tables, session.session_id) == expected
    await assert_no_checked_out(engine)
