"""Property-based tests: random add/get/pop/clear sequences over several sessions vs a model.

Hypothesis drives plain (synchronous) test functions; each test owns one
event loop, on which it creates its engine and tables once and then runs
every example as a coroutine. Examples use fresh session ids, so they never
see each other's rows. ``LATTICE_HYPOTHESIS_EXAMPLES`` raises the example
count (15 by default, to keep ``make test`` quick).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lattice.engines import make_engine
from lattice.schema import lattice_tables
from tests.conftest import assert_no_checked_out, backend_url
from tests.reliability import session_on

EXAMPLES = int(os.environ.get("LATTICE_HYPOTHESIS_EXAMPLES", "15"))
SESSIONS = 3

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
item = st.dictionaries(st.text(max_size=10), json_value, max_size=4)

operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, SESSIONS - 1), st.lists(item, max_size=4)),
    st.tuples(st.just("get"), st.integers(0, SESSIONS - 1), st.none() | st.integers(-1, 6)),
    st.tuples(st.just("pop"), st.integers(0, SESSIONS - 1), st.none()),
    st.tuples(st.just("clear"), st.integers(0, SESSIONS - 1), st.none()),
)


class Harness:
    """One loop, one engine, one set of tables for all examples of a test."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = make_engine(backend_url(backend, tmp_path))
        tag = uuid.uuid4().hex[:10]
        self.tables = lattice_tables(f"lt{tag}_sessions", f"lt{tag}_messages")
        self.run(self._create())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.tables.metadata.create_all)

    async def _drop(self) -> None:
        await assert_no_checked_out(self.engine)
        async with self.engine.begin() as conn:
            await conn.run_sync(self.tables.metadata.drop_all)
        await self.engine.dispose()

    def close(self) -> None:
        try:
            self.run(self._drop())
        finally:
            self.loop.close()


@pytest.fixture
def harness(backend: str, tmp_path: Path) -> Iterator[Harness]:
    made = Harness(backend, tmp_path)
    try:
        yield made
    finally:
        made.close()


async def _run_against_model(harness: Harness, ops: list[tuple[str, int, Any]]) -> None:
    prefix = uuid.uuid4().hex[:8]
    sessions = [
        session_on(harness.engine, harness.tables, f"prop-{prefix}-{i}") for i in range(SESSIONS)
    ]
    model: list[list[dict[str, Any]]] = [[] for _ in range(SESSIONS)]
    for name, index, arg in ops:
        session, items = sessions[index], model[index]
        if name == "add":
            await session.add_items(arg)
            items.extend(arg)
        elif name == "get":
            expected = items if arg is None else (items[-arg:] if arg > 0 else [])
            assert await session.get_items(arg) == expected
        elif name == "pop":
            assert await session.pop_item() == (items.pop() if items else None)
        else:
            await session.clear_session()
            items.clear()
    for session, items in zip(sessions, model, strict=True):
        assert await session.get_items() == items


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, max_size=25))
def test_sequences_match_the_model(harness: Harness, ops: list[tuple[str, int, Any]]) -> None:
    harness.run(_run_against_model(harness, ops))


@settings(
    max_examples=max(5, EXAMPLES // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=st.lists(st.lists(item, min_size=1, max_size=4), min_size=1, max_size=6))
def test_concurrent_batches_keep_every_item_once(
    harness: Harness, batches: list[list[dict[str, Any]]]
) -> None:
    """Batches written at once land whole and contiguous, in some order; pops drain them."""

    async def scenario() -> None:
        sid = f"prop-{uuid.uuid4().hex[:8]}"
        writers = [session_on(harness.engine, harness.tables, sid) for _ in batches]
        tagged = [
            [{"b": b, "i": i, "v": it} for i, it in enumerate(batch)]
            for b, batch in enumerate(batches)
        ]
        await asyncio.gather(*(w.add_items(t) for w, t in zip(writers, tagged, strict=True)))
        stored = await writers[0].get_items()
        order = []
        position = 0
        while position < len(stored):
            batch = tagged[stored[position]["b"]]
            assert stored[position : position + len(batch)] == batch
            order.append(stored[position]["b"])
            position += len(batch)
        assert sorted(order) == list(range(len(batches)))
        popped = await asyncio.gather(*(w.pop_item() for w in writers))
        remaining = await writers[0].get_items()
        assert None not in popped
        assert remaining == stored[: len(stored) - len(popped)]
        assert sorted(map(repr, popped)) == sorted(map(repr, stored[len(remaining) :]))

    harness.run(scenario())
