"""SessionStore: engine ownership, the catalogue, listing, retention, on every backend."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractAsyncContextManager

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore, SQLAlchemySession
from lattice.engines import make_engine
from lattice.schema import LatticeTables
from lattice.store import retention
from lattice.store.listing import decode_cursor

from .conftest import temporary_tables

UTC = dt.timezone.utc


def extra_tables(engine: AsyncEngine) -> AbstractAsyncContextManager[LatticeTables]:
    """Another fresh pair of tables on ``engine``, dropped afterwards."""
    return temporary_tables(engine, prefix="lx")


def store_on(engine: AsyncEngine, tables: LatticeTables) -> SessionStore:
    return SessionStore(
        engine, sessions_table=tables.sessions.name, messages_table=tables.messages.name
    )


@pytest.fixture
def store(engine: AsyncEngine, tables: LatticeTables) -> SessionStore:
    return store_on(engine, tables)


async def set_updated_at(store: SessionStore, session_id: str, when: dt.datetime) -> None:
    s = store.tables.sessions
    async with store.engine.begin() as conn:
        await conn.execute(update(s).where(s.c.session_id == session_id).values(updated_at=when))


async def seed(store: SessionStore, ids: list[str], items: int = 1) -> None:
    """Sessions with ``items`` items each, last active one minute apart in list order."""
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    for n, session_id in enumerate(ids):
        await store.session(session_id).add_items([{"n": k} for k in range(items)])
        await set_updated_at(store, session_id, base + dt.timedelta(minutes=n))


# -- engines and sessions ------------------------------------------------------------


async def test_session_shares_the_store_engine(store: SessionStore) -> None:
    session = store.session("s1", session_settings={"limit": 1})
    assert isinstance(session, SQLAlchemySession)
    assert session.engine is store.engine
    assert session.tables is store.tables
    await session.add_items([{"a": 1}, {"b": 2}])
    assert await session.get_items() == [{"b": 2}]
    assert await store.session("s1").get_items() == [{"a": 1}, {"b": 2}]


async def test_a_passed_in_engine_is_never_disposed(store: SessionStore) -> None:
    pool = store.engine.sync_engine.pool
    async with store:
        await store.session("s").add_items([{"a": 1}])
    assert store.engine.sync_engine.pool is pool
    assert await store.session("s").get_items() == [{"a": 1}]


async def test_from_url_owns_and_disposes_its_engine(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/own.db"
    async with SessionStore.from_url(url, create_tables=True) as store:
        await store.session("s").add_items([{"a": 1}])
        pool = store.engine.sync_engine.pool
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert store.engine.sync_engine.pool is not pool  # dispose() swapped the pool
    with pytest.raises(TypeError, match="AsyncEngine"):
        SessionStore("sqlite://")  # type: ignore[arg-type]


async def test_create_tables_from_the_store(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/create.db"
    async with SessionStore.from_url(url, create_tables=True) as store:
        assert await store.count() == 0
        assert await store.get_info("nobody") is None


# -- the catalogue -----------------------------------------------------------------


async def test_info_follows_add_pop_clear(store: SessionStore) -> None:
    assert await store.get_info("s") is None
    session = store.session("s")
    await session.add_items([{"i": i} for i in range(5)])
    first = await store.get_info("s")
    assert first is not None and first.item_count == 5 and first.metadata == {}
    assert first.created_at.tzinfo is not None
    await session.pop_item()
    popped = await store.get_info("s")
    assert popped is not None and popped.item_count == 4
    assert popped.updated_at >= first.updated_at and popped.created_at == first.created_at
    await session.clear_session()
    cleared = await store.get_info("s")
    assert cleared is not None and cleared.item_count == 0


async def test_metadata_merge_and_replace(store: SessionStore) -> None:
    await store.session("s").add_items([{"a": 1}])
    before = await store.get_info("s")
    info = await store.set_metadata("s", {"owner": "ann", "title": "Trip", "prefs": {"x": 1}})
    assert info.metadata == {"owner": "ann", "title": "Trip", "prefs": {"x": 1}}
    assert info.owner == "ann"
    info = await store.set_metadata("s", {"title": None, "prefs": {"y": 2}, "tags": ["a"]})
    assert info.metadata == {"owner": "ann", "prefs": {"x": 1, "y": 2}, "tags": ["a"]}
    info = await store.set_metadata("s", {"tags": []}, replace=True)
    assert info.metadata == {"tags": []} and info.owner is None
    assert before is not None and info.updated_at == before.updated_at  # not activity
    assert info.item_count == 1
    assert (await store.list_sessions(owner="ann")).sessions == []


async def test_metadata_before_the_first_item_makes_the_row(store: SessionStore) -> None:
    info = await store.set_metadata("new", {"owner": "bo"})
    assert info.item_count == 0 and info.owner == "bo"
    await store.session("new").add_items([{"a": 1}])
    again = await store.get_info("new")
    assert again is not None and again.item_count == 1 and again.owner == "bo"


@pytest.mark.parametrize(
    ("metadata", "error", "match"),
    [
        (["owner"], TypeError, "metadata must be a dict"),
        ({"when": dt.datetime(2024, 1, 1, tzinfo=UTC)}, TypeError, "cannot be stored as JSON"),
        ({"x": float("nan")}, ValueError, "metadata cannot be stored"),
        ({"owner": 7}, TypeError, r'metadata\["owner"\] must be a string'),
        ({"owner": ""}, ValueError, r'metadata\["owner"\] must be 1 to 255'),
        ({"big": "x" * 70_000}, ValueError, "over the limit of 65535 bytes"),
    ],
)
async def test_bad_metadata_is_refused_and_nothing_changes(
    store: SessionStore, metadata: object, error: type[Exception], match: str
) -> None:
    await store.set_metadata("s", {"keep": True})
    with pytest.raises(error, match=match):
        await store.set_metadata("s", metadata, replace=True)  # type: ignore[arg-type]
    info = await store.get_info("s")
    assert info is not None and info.metadata == {"keep": True}


async def test_merge_result_over_the_limit_rolls_back(store: SessionStore) -> None:
    await store.set_metadata("s", {"a": "x" * 40_000})
    with pytest.raises(ValueError, match="65535"):
        await store.set_metadata("s", {"b": "y" * 40_000})
    info = await store.get_info("s")
    assert info is not None and set(info.metadata) == {"a"}


# -- listing -----------------------------------------------------------------------


async def test_pages_walk_every_session_once_newest_first(store: SessionStore) -> None:
    ids = [f"s{n:02d}" for n in range(11)]
    await seed(store, ids)
    # Two sessions with the same updated_at: the id breaks the tie.
    await set_updated_at(store, "s03", dt.datetime(2024, 1, 1, 0, 4, tzinfo=UTC))
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_sessions(limit=3, cursor=cursor)
        assert len(page) <= 3
        seen += [info.session_id for info in page]
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = ["s10", "s09", "s08", "s07", "s06", "s05", "s04", "s03", "s02", "s01", "s00"]
    assert seen == expected
    assert (await store.list_sessions(limit=11)).next_cursor is None
    # Oldest first, the tie is broken the other way round.
    assert [i.session_id async for i in store.iter_sessions(newest_first=False)] == ids


async def test_filters(store: SessionStore) -> None:
    ids = ["team-a/1", "team-a/2", "Team-a/3", "team-b/1", "team_a%", "team-ab"]
    await seed(store, ids)
    await store.set_metadata("team-a/1", {"owner": "ann", "tier": "pro"})
    await store.set_metadata("team-a/2", {"owner": "ann", "tier": "free"})
    await store.set_metadata("team-b/1", {"owner": "bob", "tier": "pro"})

    async def listed(**kwargs: object) -> list[str]:
        return [i.session_id for i in await store.list_sessions(**kwargs)]  # type: ignore[arg-type]

    assert await listed(prefix="team-a") == ["team-ab", "team-a/2", "team-a/1"]
    assert await listed(prefix="team_a") == ["team_a%"]  # no LIKE wildcards
    assert await listed(prefix="Team") == ["Team-a/3"]  # case-sensitive
    assert await listed(owner="ann") == ["team-a/2", "team-a/1"]
    assert await listed(metadata={"tier": "pro"}) == ["team-b/1", "team-a/1"]
    assert await listed(metadata={"owner": "ann", "tier": "pro"}) == ["team-a/1"]
    after = dt.datetime(2024, 1, 1, 0, 1, tzinfo=UTC)
    before = dt.datetime(2024, 1, 1, 0, 4, tzinfo=UTC)
    assert await listed(updated_after=after, updated_before=before) == ["team-b/1", "Team-a/3"]
    assert await store.count() == 6
    assert await store.count(owner="ann") == 2
    assert await store.count(metadata={"tier": "pro"}) == 2
    assert await store.count(prefix="team-a", updated_before=before) == 2
    assert await store.totals(owner="ann") == (2, 2)
    # A metadata filter that matches rarely still fills the page and pages on.
    page = await store.list_sessions(metadata={"tier": "pro"}, limit=1)
    assert [i.session_id for i in page] == ["team-b/1"]
    page = await store.list_sessions(metadata={"tier": "pro"}, limit=1, cursor=page.next_cursor)
    assert [i.session_id for i in page] == ["team-a/1"]


async def test_listing_arguments_are_checked(store: SessionStore) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        await store.list_sessions(cursor="not-a-cursor")
    with pytest.raises(ValueError, match="limit must be at most 1000"):
        await store.list_sessions(limit=1001)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        await store.list_sessions(limit=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.list_sessions(updated_after=dt.datetime(2024, 1, 1))  # noqa: DTZ001
    with pytest.raises(TypeError, match="owner must be a str"):
        await store.count(owner=3)  # type: ignore[arg-type]


async def test_cursor_survives_a_session_moving_to_the_front(store: SessionStore) -> None:
    await seed(store, ["a", "b", "c", "d"])
    page = await store.list_sessions(limit=2)
    assert [i.session_id for i in page] == ["d", "c"]
    await store.session("a").add_items([{"new": 1}])  # "a" is now the newest
    assert page.next_cursor is not None
    when, session_id = decode_cursor(page.next_cursor)
    assert session_id == "c" and when.tzinfo is not None
    rest = await store.list_sessions(limit=5, cursor=page.next_cursor)
    assert [i.session_id for i in rest] == ["b"]


# -- retention ---------------------------------------------------------------------


async def test_delete_session_in_batches(store: SessionStore) -> None:
    await seed(store, ["big", "other"], items=10)
    result = await store.delete_session("big", batch_items=3)
    assert (result.sessions, result.items) == (1, 10)
    assert await store.get_info("big") is None
    assert await store.session("big").get_items() == []
    assert len(await store.session("other").get_items()) == 10
    missing = await store.delete_session("big")
    assert (missing.sessions, missing.items) == (0, 0)


async def test_delete_sessions_by_owner(store: SessionStore) -> None:
    await seed(store, [f"s{n}" for n in range(7)], items=2)
    for n in range(5):
        await store.set_metadata(f"s{n}", {"owner": "gone"})
    await store.session("s0").add_items([{"more": k} for k in range(6)])  # 8 items
    steps: list[int] = []
    result = await store.delete_sessions(owner="gone", batch_items=4, progress=steps.append)
    assert (result.sessions, result.items) == (5, 16)
    assert sum(steps) == 5 and len(steps) >= 3  # several transactions
    assert await store.count(owner="gone") == 0
    assert await store.count() == 2
    with pytest.raises(ValueError, match="needs a filter"):
        await store.delete_sessions()


async def test_purge_deletes_only_idle_sessions(store: SessionStore) -> None:
    await seed(store, ["old1", "old2", "old3"], items=3)
    await store.session("fresh").add_items([{"a": 1}])
    result = await store.purge(dt.timedelta(days=1), batch_items=2)
    assert (result.sessions, result.items) == (3, 9)
    assert [i.session_id for i in await store.list_sessions()] == ["fresh"]
    nothing = await store.purge(dt.timedelta(days=1))
    assert (nothing.sessions, nothing.items) == (0, 0)
    with pytest.raises(TypeError, match="timedelta"):
        await store.purge(30)  # type: ignore[arg-type]


async def test_purge_keeps_a_session_that_became_active(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(store, ["old", "revived"], items=2)
    original = retention._delete_group

    async def revive_first(core: object, ids: list[str], filters: object) -> object:
        # Between listing and deleting, "revived" gets a new item.
        await store.session("revived").add_items([{"back": True}])
        return await original(core, ids, filters)  # type: ignore[arg-type]

    monkeypatch.setattr(retention, "_delete_group", revive_first)
    result = await store.purge(dt.timedelta(days=1))
    assert (result.sessions, result.items) == (1, 2)
    info = await store.get_info("revived")
    assert info is not None and info.item_count == 3


@pytest.mark.only_backends("sqlite_file", "postgres", "mysql")  # memory lives in one engine
async def test_a_different_engine_sees_the_same_catalogue(
    store: SessionStore, backend: str
) -> None:
    await seed(store, ["x"])
    other = make_engine(store.engine.url)
    try:
        mirror = SessionStore(
            other,
            sessions_table=store.tables.sessions.name,
            messages_table=store.tables.messages.name,
        )
        assert [i.session_id for i in await mirror.list_sessions()] == ["x"]
    finally:
        await other.dispose()
