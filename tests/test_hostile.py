"""Hostile input: each case gets a clear error or a documented behaviour, and nothing partial.

The conformance suite covers the common bad items (non-dicts, datetimes,
NaN, a lone surrogate ...). These are the nastier ones: extreme nesting,
surrogates in keys, NUL everywhere, sizes counted in bytes rather than
characters, MySQL's packet limit with escaping, control characters in ids.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SQLAlchemySession
from lattice.items import MAX_NESTING_DEPTH
from lattice.schema import LatticeTables
from tests.reliability import session_on, stored


def _nested_dicts(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _nested_lists(levels: int) -> dict[str, Any]:
    value: list[Any] = []
    for _ in range(levels - 2):
        value = [value]
    return {"a": value}


def _circular() -> dict[str, Any]:
    item: dict[str, Any] = {"role": "user"}
    item["self"] = item
    return item


def _sid() -> str:
    return f"hostile-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def session(engine: AsyncEngine, tables: LatticeTables) -> SQLAlchemySession:
    return session_on(engine, tables, _sid())


BAD_ITEMS: list[tuple[str, Any, type[Exception], str]] = [
    ("100k nested dicts", _nested_dicts(100_000), ValueError, "nested"),
    ("100k nested lists", _nested_lists(100_000), ValueError, "nested"),
    ("one level too deep", _nested_dicts(MAX_NESTING_DEPTH + 1), ValueError, "nested"),
    ("circular", _circular(), ValueError, "JSON"),
    ("surrogate in key", {"bad \udfff key": 1}, ValueError, "surrogate"),
    ("reversed pair", {"t": "\udc00\ud800"}, ValueError, "surrogate"),
    ("split pair", {"t": ["ok", {"deep": "\ud83d\ude00"}]}, ValueError, "surrogate"),
    ("nan deep", {"a": [{"b": float("nan")}]}, ValueError, "nan"),
    ("infinity key", {float("inf"): 1}, ValueError, "key"),
    ("bool key", {True: 1}, TypeError, "key"),
    ("None key", {None: "x"}, TypeError, "key"),
    ("nested int key", {"a": [{"b": {7: "x"}}]}, TypeError, "key"),
    ("bytes key", {b"k": 1}, TypeError, "key"),
]


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [case[1:] for case in BAD_ITEMS],
    ids=[case[0] for case in BAD_ITEMS],
)
async def test_bad_item_gets_a_clear_error_and_nothing_is_stored(
    session: SQLAlchemySession, bad: Any, error: type[Exception], words: str
) -> None:
    await session.add_items([{"keep": 1}])
    good = [{"n": n} for n in range(100)]
    with pytest.raises(error, match=rf"(?i)item 100\b.*{words}"):
        await session.add_items([*good, bad])
    assert await session.get_items() == [{"keep": 1}]
    await session.add_items([{"next": "works"}])
    assert await session.get_items() == [{"keep": 1}, {"next": "works"}]


async def _read_from_deep_stack(session: SQLAlchemySession, frames: int) -> list[Any]:
    if frames == 0:
        return await session.get_items()
    return await _read_from_deep_stack(session, frames - 1)


async def test_deepest_accepted_item_reads_back_from_a_deep_call_stack(
    session: SQLAlchemySession,
) -> None:
    """Accepted nesting is a fixed limit, so a caller deep in a framework can still read it."""
    deepest = _nested_dicts(MAX_NESTING_DEPTH)
    await session.add_items([deepest])
    assert await _read_from_deep_stack(session, 400) == [deepest]
    assert await session.pop_item() == deepest


async def test_nul_everywhere_round_trips(session: SQLAlchemySession) -> None:
    """NUL in values and keys is stored (as JSON's \\u0000 escape) and comes back exact."""
    items = [{"\x00": "\x00", "k\x00ey": ["a\x00b", {"\x00\x00": None}]}, {"t": "\x00" * 1000}]
    await session.add_items(items)
    got = await session.get_items()
    assert got == items
    assert [json.dumps(i, ensure_ascii=False) for i in got] == [
        json.dumps(i, ensure_ascii=False) for i in items
    ]
    with pytest.raises(ValueError, match="NUL"):
        SQLAlchemySession("bad\x00id", engine=session.engine)


async def test_size_limit_counts_utf8_bytes_not_characters(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = session_on(engine, tables, _sid(), max_item_bytes=1000)
    fits = {"t": "é" * 490}  # 980 bytes of UTF-8 once encoded, plus the JSON around it
    too_big = {"t": "é" * 500}  # 500 characters, but over 1000 bytes
    await session.add_items([fits])
    with pytest.raises(ValueError, match=r"item 1 is 1\d{3} bytes.*max_item_bytes"):
        await session.add_items([fits, too_big])
    assert await session.get_items() == [fits]


CONTROL_CHARACTERS = [chr(c) for c in range(1, 32)] + ["\x7f", "\x85", "\u2028", "\ufeff"]


async def test_session_ids_with_control_characters_are_exact_and_distinct(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    """Documented: every control character but NUL is a legal, distinct id character."""
    base = _sid()
    ids = [f"{base}{ch}end" for ch in CONTROL_CHARACTERS] + [base + "end"]
    for sid in ids:
        await session_on(engine, tables, sid).add_items([{"sid": sid}])
    for sid in ids:
        assert await stored(engine, tables, sid) == [{"sid": sid}]
        session = session_on(engine, tables, sid)
        assert await session.pop_item() == {"sid": sid}


# -- MySQL's max_allowed_packet ----------------------------------------------------------


@pytest.fixture
async def packet(engine: AsyncEngine, backend: str) -> int:
    assert backend == "mysql"
    async with engine.connect() as conn:
        limit = int((await conn.execute(text("SELECT @@max_allowed_packet"))).scalar_one())
    if limit > 64 * 1024 * 1024:
        pytest.skip(f"max_allowed_packet is {limit}: too large to test cheaply")
    return limit


@pytest.mark.only_backends("mysql")  # max_allowed_packet is MySQL's
async def test_item_over_max_allowed_packet_names_the_setting(
    engine: AsyncEngine, tables: LatticeTables, packet: int
) -> None:
    """Under max_item_bytes but over the server's packet: refused before anything is sent."""
    session = session_on(engine, tables, _sid(), max_item_bytes=4 * packet)
    await session.add_items([{"keep": 1}])
    plain = {"t": "x" * (packet + 10)}
    # Half the packet in JSON, but every " is escaped again on the wire: twice the size.
    quotes = {"t": '"' * (packet // 3)}
    for bad in (plain, quotes):
        with pytest.raises(ValueError, match=rf"item 1 .*max_allowed_packet = {packet}"):
            await session.add_items([{"ok": 1}, bad])
    assert await session.get_items() == [{"keep": 1}]
    # The largest item the check lets through is really stored, whole.
    near = {"t": "x" * (packet - 1024 - 40)}
    await session.add_items([near])
    assert await session.pop_item() == near
    assert await session.get_items() == [{"keep": 1}]
