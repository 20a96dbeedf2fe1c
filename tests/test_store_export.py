"""Export, import and copy: exact round trips, conflict policies, bad files, bounded memory."""

from __future__ import annotations

import datetime as dt
import io
import json
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore
from lattice.schema import LatticeTables

from .test_store import extra_tables, store_on

# Items whose stored text must survive byte for byte: key order, 1 vs 1.0,
# big integers, NUL, non-ASCII, and (inserted raw below) text written by
# another program with its own spacing and escapes.
ITEMS = [
    {"role": "user", "content": "héllo \u0000 ☃ 😀", "z": 1, "a": 1.0},
    {"type": "function_call", "arguments": '{"x": 1}', "big": 2**70},
    {"nested": {"b": [1, 2.5, None, True], "a": {}}},
]
FOREIGN_TEXT = '{"b": 1,  "a": 1.10, "s": "\\u00e9"}'


@pytest.fixture
def store(engine: AsyncEngine, tables: LatticeTables) -> SessionStore:
    return store_on(engine, tables)


async def stored_texts(store: SessionStore, session_id: str) -> list[str]:
    m = store.tables.messages
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(m.c.message_data).where(m.c.session_id == session_id).order_by(m.c.id)
        )
        return [row[0] for row in rows]


async def fill(store: SessionStore) -> None:
    await store.session("s1").add_items(ITEMS)
    m = store.tables.messages
    async with store.engine.begin() as conn:
        await conn.execute(insert(m).values(session_id="s1", message_data=FOREIGN_TEXT))
    await store.set_metadata("s1", {"owner": "ann", "tags": ["a", "ü"]})
    await store.session("s2").add_items([{"i": i} for i in range(7)])
    await store.session("empty").add_items([{"x": 1}])
    await store.session("empty").clear_session()


async def assert_same(source: SessionStore, target: SessionStore, ids: list[str]) -> None:
    for session_id in ids:
        assert await stored_texts(target, session_id) == await stored_texts(source, session_id)
        a, b = await source.get_info(session_id), await target.get_info(session_id)
        assert a is not None and b is not None
        assert (b.created_at, b.updated_at, b.metadata) == (a.created_at, a.updated_at, a.metadata)
        assert b.item_count == len(await stored_texts(target, session_id))


async def test_round_trip_is_exact(store: SessionStore, engine: AsyncEngine) -> None:
    await fill(store)
    buffer = io.StringIO()
    exported = await store.export_jsonl(buffer)
    assert (exported.sessions, exported.items) == (3, 11)
    lines = buffer.getvalue().splitlines()
    assert json.loads(lines[0])["format"] == "lattice-sessions"
    assert json.loads(lines[-1]) == {"type": "end", "sessions": 3, "items": 11}
    buffer.seek(0)
    async with extra_tables(engine) as other_tables:
        other = store_on(engine, other_tables)
        result = await other.import_jsonl(buffer, on_conflict="skip")
        assert (result.created, result.items) == (3, 11)
        await assert_same(store, other, ["s1", "s2", "empty"])
        assert (await stored_texts(other, "s1"))[-1] == FOREIGN_TEXT
        assert [i.session_id for i in await other.list_sessions(owner="ann")] == ["s1"]


async def test_copy_within_one_database_keeps_exact_counts(
    store: SessionStore, engine: AsyncEngine
) -> None:
    # Same engine: the copy is INSERT ... SELECT, counted from its rowcount
    # (which psycopg reported as -1 unless SQLAlchemy was asked to keep it).
    await fill(store)
    async with extra_tables(engine) as other_tables:
        other = store_on(engine, other_tables)
        result = await store.copy_to(other, on_conflict="skip")
        assert (result.created, result.items) == (3, 11)
        await assert_same(store, other, ["s1", "s2", "empty"])
        appended = await store.copy_to(other, on_conflict="append", prefix="s2")
        assert appended.items == 7
        info = await other.get_info("s2")
        assert info is not None and info.item_count == 14


async def test_conflict_policies(store: SessionStore, tmp_path: Path) -> None:
    await fill(store)
    dump = tmp_path / "dump.jsonl"
    await store.export_jsonl(dump, prefix="s")
    assert not (tmp_path / "dump.jsonl.partial").exists()
    await store.session("s2").add_items([{"local": True}])
    await store.set_metadata("s2", {"owner": "local", "keep": 1})

    skipped = await store.import_jsonl(dump, on_conflict="skip")
    assert (skipped.skipped, skipped.items) == (2, 0)
    assert len(await store.session("s2").get_items()) == 8

    appended = await store.import_jsonl(dump, on_conflict="append")
    assert (appended.appended, appended.items) == (2, 11)
    s2 = await store.get_info("s2")
    assert s2 is not None and s2.item_count == 15
    assert s2.metadata == {"owner": "local", "keep": 1}  # nothing imported to merge
    items = await store.session("s2").get_items()
    assert items[7] == {"local": True} and items[8:] == [{"i": i} for i in range(7)]
    s1 = await store.get_info("s1")
    assert s1 is not None and s1.metadata == {"owner": "ann", "tags": ["a", "ü"]}

    replaced = await store.import_jsonl(dump, on_conflict="replace")
    assert (replaced.replaced, replaced.items) == (2, 11)
    assert await store.session("s2").get_items() == [{"i": i} for i in range(7)]
    with pytest.raises(ValueError, match="on_conflict must be one of"):
        await store.import_jsonl(dump, on_conflict="merge")


HEADER = '{"format": "lattice-sessions", "version": 1}\n'
SESSION = (
    '{"type": "session", "session_id": "n", "created_at": "2024-01-01T00:00:00+00:00", '
    '"updated_at": "2024-01-01T00:00:00+00:00", "metadata": null}\n'
)
ITEM = '{"type": "item", "created_at": "2024-01-01T00:00:00+00:00", "json": "{\\"a\\": 1}"}\n'
END = '{"type": "end", "sessions": 1, "items": 1}\n'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ('{"format": "other"}\n', "line 1: not a Lattice export"),
        ('{"format": "lattice-sessions", "version": 2}\n', "line 1: format version 2"),
        (HEADER + SESSION + ITEM, "without its end line: truncated"),
        (HEADER + ITEM + END, "line 2: an item before any session"),
        (
            HEADER + SESSION + ITEM.replace('{\\"a\\": 1}', "[1]") + END,
            "line 3: .* not a JSON object",
        ),
        (HEADER + SESSION + ITEM.replace("2024-01-01T00:00:00+00:00", "yesterday") + END, "ISO"),
        (HEADER + SESSION + SESSION + END, "line 3: session 'n' appears twice"),
        (HEADER + SESSION + "{oops\n" + END, "line 3: the line is not JSON"),
        (HEADER + SESSION.replace('"n"', '""') + END, "line 2: bad session_id"),
        (HEADER + SESSION + ITEM + END.replace('"items": 1', '"items": 5'), "line 4: the end"),
        (HEADER + SESSION.replace("null", '{"owner": 3}') + END, "bad metadata"),
    ],
)
async def test_bad_files_change_nothing(store: SessionStore, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        await store.import_jsonl(io.StringIO(text), on_conflict="append")
    assert await store.count() == 0


async def test_copy_between_backends(store: SessionStore, tmp_path: Path) -> None:
    # SQLite file -> this backend -> another SQLite file, order and metadata kept.
    url = f"sqlite+aiosqlite:///{tmp_path / 'source.db'}"
    async with SessionStore.from_url(url, create_tables=True) as source:
        await fill(source)
        steps: list[int] = []
        result = await source.copy_to(store, on_conflict="skip", progress=steps.append)
        assert (result.created, result.items, sum(steps)) == (3, 11, 11)
        await assert_same(source, store, ["s1", "s2", "empty"])
        again = await source.copy_to(store, on_conflict="skip")
        assert (again.skipped, again.items) == (3, 0)
        with pytest.raises(ValueError, match="another store"):
            await source.copy_to(source, on_conflict="skip")
    back_url = f"sqlite+aiosqlite:///{tmp_path / 'back.db'}"
    async with SessionStore.from_url(back_url, create_tables=True) as back:
        result = await store.copy_to(back, on_conflict="replace", owner="ann")
        assert (result.created, result.items) == (1, 4)
        await assert_same(store, back, ["s1"])


async def test_export_memory_stays_bounded(store: SessionStore, tmp_path: Path) -> None:
    """A scaled-down version of the 1,000,000-item benchmark (benchmarks/store_bench.py).

    16 MB of items are exported while Python's allocations peak at a fraction
    of that: the export holds a chunk of rows, not the data set.
    """
    payload = "x" * 2000
    for n in range(4):
        session = store.session(f"big{n}")
        for start in range(0, 2000, 500):
            await session.add_items([{"i": i, "p": payload} for i in range(start, start + 500)])
    dump = tmp_path / "big.jsonl"
    tracemalloc.start()
    try:
        result = await store.export_jsonl(dump)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.items == 8000
    size = dump.stat().st_size
    assert size > 16_000_000
    assert peak < size / 3, f"export peaked at {peak} bytes for a {size}-byte file"


async def test_timestamps_survive(store: SessionStore) -> None:
    when = dt.datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    text = (
        HEADER
        + SESSION.replace("2024-01-01T00:00:00+00:00", when.isoformat())
        + ITEM.replace("2024-01-01T00:00:00+00:00", "2021-05-06T09:08:09.5+02:00")
        + END
    )
    await store.import_jsonl(io.StringIO(text), on_conflict="skip")
    info = await store.get_info("n")
    assert info is not None and info.created_at == when and info.updated_at == when
    m = store.tables.messages
    async with store.engine.connect() as conn:
        created = (await conn.execute(select(m.c.created_at))).scalar_one()
    assert created == dt.datetime(2021, 5, 6, 7, 8, 9, 500000, tzinfo=dt.timezone.utc)
