"""The operations a–h, each timed for one implementation in one rep.

Every function returns the operation's value in its unit (see ``OPS``).
Session objects are made before the clock starts, so the SDK's per-object
table construction is not counted against it; filling a session that an
operation needs is not timed either.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from .datasets import BIG_SESSION, DataSet
from .impls import Impl
from .sizes import Sizes

__all__ = ["OPS", "Op", "item"]


@dataclass(frozen=True)
class Op:
    """An operation: its letter, what it is, its unit, and which way is better."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    #: Target for the Lattice/raw ratio (a floor if higher is better, else a ceiling).
    target: float


OPS = {
    op.key: op
    for op in (
        Op("a", "add_items, 1 item per call", "calls/s", True, 0.8),
        Op("b", "add_items, 100 items per call", "items/s", True, 0.8),
        Op("c", "get_items(), 1,000-item session", "ms", False, 1.2),
        Op("d", "get_items(limit=20), long session interleaved in big table", "ms", False, 1.3),
        Op("d1k", "get_items(limit=20), 1,000-row table", "ms", False, 1.2),
        Op("dr", "get_items(limit=20), session resumed after others' rows", "ms", False, 1.3),
        Op("e", "pop_item, sequential", "ops/s", True, 0.8),
        Op("h", "pop_item, long session interleaved in big table", "ms", False, 1.3),
        Op("h1k", "pop_item, 1,000-row table", "ms", False, 1.25),
        Op("hr", "pop_item, session resumed after others' rows", "ms", False, 1.3),
        Op("f", "50 sessions at once, 2 items per call", "items/s", True, 0.8),
        Op("g", "peak RSS growth reading 10,000 2 KB items", "MiB", False, 1.1),
    )
}


def item(n: int, size: int = 0) -> dict[str, Any]:
    """A plausible Responses-API message item, padded to about ``size`` bytes."""
    text = f"message {n}: the quick brown fox jumps over the lazy dog"
    if size > len(text) + 60:
        text += " " + "x" * (size - len(text) - 60)
    return {"type": "message", "role": "user", "content": text}


def _sid(op: str) -> str:
    return f"{op}-{uuid.uuid4().hex[:12]}"


async def _fill(session: Any, count: int, batch: int = 500) -> None:
    for start in range(0, count, batch):
        await session.add_items([item(i) for i in range(start, min(count, start + batch))])


async def _median_ms(call: Callable[[], Awaitable[Any]], times: int) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def op_a(impl: Impl, prefix: str, sizes: Sizes) -> float:
    session = impl.session(_sid("a"), prefix)
    items = [[item(i)] for i in range(sizes.a_calls)]
    started = time.perf_counter()
    for batch in items:
        await session.add_items(batch)
    return sizes.a_calls / (time.perf_counter() - started)


async def op_b(impl: Impl, prefix: str, sizes: Sizes) -> float:
    session = impl.session(_sid("b"), prefix)
    batches = [
        [item(c * sizes.b_batch + i) for i in range(sizes.b_batch)] for c in range(sizes.b_calls)
    ]
    started = time.perf_counter()
    for batch in batches:
        await session.add_items(batch)
    return sizes.b_calls * sizes.b_batch / (time.perf_counter() - started)


async def op_c(impl: Impl, prefix: str, sizes: Sizes) -> float:
    session = impl.session(_sid("c"), prefix)
    await _fill(session, sizes.c_items)
    await session.get_items()  # warm: connection, statement caches
    return await _median_ms(session.get_items, sizes.c_reads)


async def op_d(impl: Impl, data: DataSet, sizes: Sizes) -> float:
    session = impl.session(BIG_SESSION, data.prefix(impl))
    await session.get_items(limit=20)
    return await _median_ms(lambda: session.get_items(limit=20), sizes.d_reads)


async def op_e(impl: Impl, prefix: str, sizes: Sizes) -> float:
    session = impl.session(_sid("e"), prefix)
    await _fill(session, sizes.e_pops)
    started = time.perf_counter()
    for _ in range(sizes.e_pops):
        await session.pop_item()
    return sizes.e_pops / (time.perf_counter() - started)


async def op_h(impl: Impl, data: DataSet, sizes: Sizes) -> float:
    """Median time of one pop on the big session; the popped items go back afterwards.

    Put back under their old ids, so the layout (a resumed session's items
    behind everyone else's) is the same for every rep and implementation.
    """
    prefix = data.prefix(impl)
    session = impl.session(BIG_SESSION, prefix)
    messages = f"{prefix}_messages"
    newest = text(
        f"SELECT id FROM {messages} WHERE session_id = :sid ORDER BY id DESC LIMIT :n"
    ).bindparams(sid=BIG_SESSION, n=sizes.h_pops)
    async with impl.engine.connect() as conn:
        old_ids = [row[0] for row in await conn.execute(newest)]
    popped: list[Any] = []

    async def pop() -> None:
        popped.append(await session.pop_item())

    result = await _median_ms(pop, sizes.h_pops)
    if any(p is None for p in popped):
        raise RuntimeError(f"{impl.name}: the big session ran out of items")
    await session.add_items(popped[::-1])
    async with impl.engine.begin() as conn:
        new_ids = [row[0] for row in await conn.execute(newest)]
        move = text(f"UPDATE {messages} SET id = :old WHERE id = :new")
        for old, new in zip(old_ids, new_ids, strict=True):
            await conn.execute(move, {"old": old, "new": new})
    return result


async def op_f(impl: Impl, prefix: str, sizes: Sizes) -> float:
    sessions = [impl.session(_sid("f"), prefix) for _ in range(sizes.f_sessions)]
    batches = [[item(2 * c), item(2 * c + 1)][: sizes.f_batch] for c in range(sizes.f_calls)]

    async def run(session: Any) -> None:
        for batch in batches:
            await session.add_items(batch)

    impl.concurrent(True)
    try:
        started = time.perf_counter()
        await asyncio.gather(*(run(s) for s in sessions))
        elapsed = time.perf_counter() - started
    finally:
        impl.concurrent(False)
    return sizes.f_sessions * sizes.f_calls * len(batches[0]) / elapsed
