"""The pieces that made SQLite's per-call cost smaller (issue 14), held to the old behaviour.

``writes.shielded`` runs a write in a task that refuses cancellation and is
awaited directly (one event-loop iteration less than ``asyncio.shield``);
``items.loads`` reads stored text with ``JSONDecoder.raw_decode``. Both must
behave exactly as what they replaced; the database-level guarantees are in
tests/test_cancellation.py and tests/test_hostile_conditions.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from lattice import writes
from lattice.errors import PutBackFailedError, WriteOutcomeUnknownError
from lattice.items import loads


async def _write(log: list[str], pause: float = 0.02, value: Any = "done") -> Any:
    log.append("started")
    await asyncio.sleep(pause)
    log.append("finished")
    return value


async def test_an_uncancelled_write_returns_its_result_and_raises_its_error() -> None:
    assert await writes.shielded(lambda: _write([], 0)) == "done"

    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await writes.shielded(fails)


async def test_a_cancelled_caller_waits_for_the_write_then_is_cancelled() -> None:
    log: list[str] = []
    undone: list[Any] = []

    async def undo(result: Any) -> None:
        undone.append(result)

    caller = asyncio.ensure_future(writes.shielded(lambda: _write(log), undo))
    await asyncio.sleep(0.005)
    assert log == ["started"]
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done(), "the caller is held until the write ends"
    caller.cancel()  # a second cancellation changes nothing
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert log == ["started", "finished"], "the write ran to its end"
    assert undone == ["done"], "its result was undone"


async def test_a_timeout_ends_after_the_write() -> None:
    log: list[str] = []
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writes.shielded(lambda: _write(log, 0.05)), 0.01)
    assert log == ["started", "finished"]


async def test_a_cancelled_write_hands_over_what_cannot_be_undone() -> None:
    async def lost() -> None:
        await asyncio.sleep(0.02)
        raise WriteOutcomeUnknownError("lost", result="item")

    caller = asyncio.ensure_future(writes.shielded(lost))
    await asyncio.sleep(0.005)
    caller.cancel()
    with pytest.raises(WriteOutcomeUnknownError):
        await caller

    async def undo(result: Any) -> None:
        raise OSError("gone")

    caller = asyncio.ensure_future(writes.shielded(lambda: _write([]), undo))
    await asyncio.sleep(0.005)
    caller.cancel()
    with pytest.raises(PutBackFailedError) as failed:
        await caller
    assert failed.value.result == "done"


async def test_a_write_that_fails_after_the_cancellation_ends_as_cancelled() -> None:
    async def fails() -> None:
        await asyncio.sleep(0.02)
        raise ValueError("boom")

    caller = asyncio.ensure_future(writes.shielded(fails))
    await asyncio.sleep(0.005)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


@pytest.mark.parametrize(
    "text",
    [
        '{"role":"user","content":"hi"}',
        ' {"a": 1} ',
        '{"a": 1}\n',
        '"just text"',
        "[1, 2]",
        b'{"a": 1}',
        '{"a": 1} trailing',
        '{"a": ',
        "",
        "NaN",
    ],
)
def test_loads_is_json_loads(text: Any) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            loads(text)
    else:
        assert repr(loads(text)) == repr(expected)  # NaN is not equal to itself


def test_args_many_is_args_per_row() -> None:
    """Column-wise bind processing gives what processing each row would."""
    import datetime as dt

    from sqlalchemy.dialects import sqlite

    from lattice.drivers.aiosqlite import AiosqliteDriver
    from lattice.drivers.base import Stmt
    from lattice.drivers.compiled import compiled_statements
    from lattice.schema import lattice_tables

    insert = compiled_statements(lattice_tables(), sqlite.dialect(), AiosqliteDriver())[
        Stmt.INSERT_MESSAGE
    ]
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    shared = [{"sid": "s", "data": f"{n}", "now": now} for n in range(3)]
    mixed = [*shared, {"sid": "t", "data": "x", "now": now + dt.timedelta(seconds=1)}]
    for rows in (shared, mixed, shared[:1], []):
        assert insert.args_many(rows) == [insert.args(row) for row in rows]
