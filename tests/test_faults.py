"""Server-side faults on PostgreSQL and MySQL: killed connections, lost COMMIT replies, restarts.

How the faults are made (no mocks; see ``reliability.py``):

* A :class:`Pause` stops the session's call at a chosen statement or at
  COMMIT, with its transaction open on the server; an admin connection then
  ends that connection server-side (``pg_terminate_backend`` / ``KILL``),
  and the call goes on into a dead connection.
* A loopback :class:`Proxy` in front of the server forwards COMMIT but
  swallows its reply, then cuts the connection: the write committed and the
  client cannot know, the case write tokens exist for.
* A server restart is simulated by ending every connection of the engine's
  pool from the server side between calls (restarting the shared servers
  would disturb everyone else's tests), and, through the proxy, by refusing
  connections for a while.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SQLAlchemySession, writes
from lattice.errors import WriteOutcomeUnknownError
from lattice.schema import LatticeTables
from tests.conftest import SERVER_URLS
from tests.reliability import (
    Pause,
    Proxy,
    engine_for,
    instrument,
    kill,
    server_ids,
    session_on,
    stored,
    stored_count,
)

#: Simulated server restarts in the recovery test (``make soak`` runs more).
RESTART_ROUNDS = int(os.environ.get("LATTICE_RESTART_ROUNDS", "3"))


@pytest.fixture
async def admin(server_backend: str) -> AsyncIterator[AsyncEngine]:
    """A separate engine for killing and for reading behind the session's back."""
    async with engine_for(SERVER_URLS[server_backend], isolation_level="AUTOCOMMIT") as eng:
        yield eng


@pytest.fixture
async def victim(engine: AsyncEngine, server_backend: str) -> AsyncEngine:
    """The test engine, with each connection's server id recorded."""
    instrument(engine)
    await engine.dispose()  # connections made before the listener have no id
    return engine


def _sid() -> str:
    return f"fault-{uuid.uuid4().hex[:10]}"


def _batch(tag: str, n: int = 5) -> list[dict[str, Any]]:
    return [{"tag": tag, "i": i, "text": f"{tag} item {i} ü🚀"} for i in range(n)]


def _is(verb: str, table: str) -> Any:
    """Match the statement that does ``verb`` on ``table``.

    On PostgreSQL an append is one statement, ``WITH s AS (INSERT INTO
    <sessions> ...) INSERT INTO <messages> ...`` in autocommit
    (``Stmt.APPEND`` of ``lattice.drivers.asyncpg``): both INSERT points are the point before it,
    "after the insert" is after its commit, and COMMIT is the moment it is sent.
    A pop's lock and delete are one statement too (``Stmt.POP``),
    inside its transaction: both are the point before it or after it.
    """

    def match(statement: str) -> bool:
        upper = statement.lstrip().upper()
        if upper.startswith("WITH"):
            target = table.upper() + " "
            return any(f"{verb} {word}{target}" in upper for word in ("INTO ", "FROM ", ""))
        return upper.startswith(verb) and table in statement

    return match


async def _assert_usable(session: SQLAlchemySession, expected: list[dict[str, Any]]) -> None:
    """The next calls on the same session object work and see ``expected``."""
    assert await session.get_items() == expected
    await session.add_items([{"after": "fault"}])
    assert await session.pop_item() == {"after": "fault"}
    assert await session.get_items() == expected


async def _kill_at(pause: Pause, admin: AsyncEngine) -> None:
    server_id = await pause.wait()
    await kill(admin, server_id)
    pause.release()


# -- a connection killed in the middle of a call ------------------------------------------

# Where to stop the call before killing its connection: (statement verb, table,
# after the statement ran?), or None for COMMIT.
Point = tuple[str, str, bool] | None


async def _kill_during(
    victim: AsyncEngine, tables: LatticeTables, admin: AsyncEngine, point: Point, call: Any
) -> Any:
    """Run ``call()``, kill its connection at ``point``, and return what it returned."""
    if point is None:
        pause = Pause(victim)
    else:
        verb, table, after = point
        pause = Pause(victim, _is(verb, getattr(tables, table).name), after=after)
    task = asyncio.ensure_future(call())
    try:
        await _kill_at(pause, admin)
        return await task
    finally:
        pause.close()


ADD_POINTS: dict[str, Point] = {
    "before-upsert": ("INSERT", "sessions", False),
    "before-insert": ("INSERT", "messages", False),
    "after-insert": ("INSERT", "messages", True),
    "at-commit": None,
}


@pytest.mark.parametrize("point", list(ADD_POINTS))
async def test_kill_during_add_items_stores_the_batch_once(
    victim: AsyncEngine, tables: LatticeTables, admin: AsyncEngine, point: str
) -> None:
    sid = _sid()
    session = session_on(victim, tables, sid)
    await session.add_items(_batch("before", 2))
    # Nothing committed before the kill, so the retry on a new connection is
    # safe and the caller sees success.
    await _kill_during(
        victim, tables, admin, ADD_POINTS[point], lambda: session.add_items(_batch("hit"))
    )
    expected = _batch("before", 2) + _batch("hit")
    assert await stored(admin, tables, sid) == expected
    assert await stored_count(admin, tables, sid) == len(expected)
    await _assert_usable(session, expected)


POP_POINTS: dict[str, Point] = {
    "before-lock": ("UPDATE", "sessions", False),
    "after-lock": ("UPDATE", "sessions", True),
    "after-delete": ("DELETE", "messages", True),
    "at-commit": None,
}


@pytest.mark.parametrize("point", list(POP_POINTS))
async def test_kill_during_pop_item_hands_out_the_item_once(
    victim: AsyncEngine, tables: LatticeTables, admin: AsyncEngine, point: str
) -> None:
    sid = _sid()
    session = session_on(victim, tables, sid)
    items = _batch("pop", 4)
    await session.add_items(items)
    popped = await _kill_during(victim, tables, admin, POP_POINTS[point], session.pop_item)
    assert popped == items[-1]
    assert await stored(admin, tables, sid) == items[:-1]
    assert await stored_count(admin, tables, sid) == 3
    await _assert_usable(session, items[:-1])


@pytest.mark.parametrize("call", ["add", "pop", "clear"])
async def test_killed_twice_raises_and_writes_nothing(
    victim: AsyncEngine, tables: LatticeTables, admin: AsyncEngine, call: str
) -> None:
    """The one retry is killed too: a clear error, and the data is as before."""
    sid = _sid()
    session = session_on(victim, tables, sid)
    items = _batch("keep", 3)
    await session.add_items(items)
    # Both attempts die inside the transaction: an add before it inserts the
    # items (on PostgreSQL, before its one statement, which would have
    # committed once it ran), a pop or clear after it locked the session row.
    verb, table = (
        ("INSERT", tables.messages.name) if call == "add" else ("UPDATE", tables.sessions.name)
    )
    pause = Pause(victim, _is(verb, table), after=call != "add", times=2)
    calls = {
        "add": lambda: session.add_items(_batch("lost")),
        "pop": session.pop_item,
        "clear": session.clear_session,
    }
    task = asyncio.ensure_future(calls[call]())
    try:
        await _kill_at(pause, admin)
        await _kill_at(pause, admin)
        with pytest.raises(DBAPIError) as caught:
            await task
    finally:
        pause.close()
    assert caught.value.connection_invalidated
    assert await stored(admin, tables, sid) == items
    assert await stored_count(admin, tables, sid) == len(items)
    await _assert_usable(session, items)


# -- the reply to COMMIT lost: the write committed, the client cannot know -------------------


@pytest.fixture
async def proxied(
    server_backend: str, admin: AsyncEngine
) -> AsyncIterator[tuple[Proxy, AsyncEngine, LatticeTables]]:
    """An engine that reaches the server through a proxy, on fresh tables."""
    from lattice.schema import lattice_tables

    tag = uuid.uuid4().hex[:10]
    made = lattice_tables(f"lt{tag}_sessions", f"lt{tag}_messages")
    async with admin.begin() as conn:
        await conn.run_sync(made.metadata.create_all)
    try:
        async with Proxy(SERVER_URLS[server_backend]) as proxy:
            async with engine_for(proxy.url()) as eng:
                instrument(eng)
                proxy.engine = eng
                yield proxy, eng, made
                assert eng.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        async with admin.begin() as conn:
            await conn.run_sync(made.metadata.drop_all)


async def _until(check: Any, timeout: float = 20) -> None:
    """Poll ``check()`` until it is true."""

    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)  # asyncio.timeout needs Python 3.11


async def _lose_commit_reply(
    proxy: Proxy,
    call: Any,
    rows_after: Any,
    *,
    server_down: bool = False,
) -> Any:
    """Run ``call()`` so that its COMMIT reaches the server but the reply never returns.

    Once ``rows_after()`` shows the commit is durable, every connection is
    cut (and, with ``server_down``, new ones are refused while the call
    finishes). Returns what the call returned.
    """
    pause = Pause(proxy.engine)
    task = asyncio.ensure_future(call())
    try:
        await pause.wait()
        proxy.swallow_replies = True
        pause.release()
        await _until(rows_after)
        proxy.refuse = server_down
        proxy.cut()
        proxy.swallow_replies = False
        return await task
    finally:
        pause.close()
        proxy.swallow_replies = proxy.refuse = False


async def test_add_items_whose_commit_reply_is_lost_is_not_duplicated(
    proxied: tuple[Proxy, AsyncEngine, LatticeTables], admin: AsyncEngine
) -> None:
    proxy, eng, tables = proxied
    session = session_on(eng, tables, _sid())
    await session.add_items(_batch("before", 1))

    async def committed() -> bool:
        return len(await stored(admin, tables, session.session_id)) == 6

    # The token says it committed: success, and no second copy.
    await _lose_commit_reply(proxy, lambda: session.add_items(_batch("once")), committed)
    expected = _batch("before", 1) + _batch("once")
    assert await stored(admin, tables, session.session_id) == expected
    assert await stored_count(admin, tables, session.session_id) == 6
    await _assert_usable(session, expected)


@pytest.mark.parametrize("server_down", [False, True], ids=["reachable", "down"])
async def test_pop_item_whose_commit_reply_is_lost_hands_over_the_item(
    proxied: tuple[Proxy, AsyncEngine, LatticeTables],
    admin: AsyncEngine,
    server_down: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reachable: the token check says it committed. Down: the error carries the item."""
    # A server that stays down is asked for OUTCOME_WAIT_S (10 s) before the error.
    monkeypatch.setattr(writes, "OUTCOME_WAIT_S", 0.5)
    proxy, eng, tables = proxied
    session = session_on(eng, tables, _sid())
    items = _batch("pop", 3)
    await session.add_items(items)

    async def committed() -> bool:
        return len(await stored(admin, tables, session.session_id)) == 2

    if server_down:
        with pytest.raises(WriteOutcomeUnknownError, match="could not be asked") as caught:
            await _lose_commit_reply(proxy, session.pop_item, committed, server_down=True)
        popped = caught.value.result
    else:
        popped = await _lose_commit_reply(proxy, session.pop_item, committed)
    assert popped == items[-1]
    assert await stored(admin, tables, session.session_id) == items[:-1]
    await _assert_usable(session, items[:-1])


# -- a server restart between calls ---------------------------------------------------------


async def test_sessions_recover_after_every_connection_is_killed(
    victim: AsyncEngine, tables: LatticeTables, admin: AsyncEngine
) -> None:
    """Simulated restart: every pooled connection ended server-side while idle."""
    sessions = [session_on(victim, tables, _sid()) for _ in range(8)]
    model: list[list[dict[str, Any]]] = [[] for _ in sessions]

    async def round_trip(index: int, round_: int) -> None:
        session, items = sessions[index], model[index]
        batch = [{"s": index, "r": round_, "i": i} for i in range(3)]
        await session.add_items(batch)
        items.extend(batch)
        assert await session.get_items(limit=2) == items[-2:]
        assert await session.pop_item() == items.pop()

    for round_ in range(RESTART_ROUNDS):
        await asyncio.gather(*(round_trip(i, round_) for i in range(len(sessions))))
        idle = server_ids(victim)
        assert len(idle) >= 2, "the pool should hold several idle connections"
        for server_id in idle:
            await kill(admin, server_id)
        # The same session objects, the same engine: no restart of the application.
    await asyncio.gather(*(round_trip(i, 99) for i in range(len(sessions))))
    for session, items in zip(sessions, model, strict=True):
        assert await stored(admin, tables, session.session_id) == items
    # A read, a clear and a pop each as the first call after the "restart".
    for call in ("get", "clear", "pop"):
        for server_id in server_ids(victim):
            await kill(admin, server_id)
        if call == "get":
            assert await sessions[0].get_items() == model[0]
        elif call == "clear":
            await sessions[1].clear_session()
            assert await stored(admin, tables, sessions[1].session_id) == []
        else:
            assert await sessions[2].pop_item() == model[2][-1]


async def test_sessions_recover_after_the_server_was_unreachable(
    proxied: tuple[Proxy, AsyncEngine, LatticeTables], admin: AsyncEngine
) -> None:
    """Through the proxy: connections cut, refused for a while, then accepted again."""
    proxy, eng, tables = proxied
    session = session_on(eng, tables, _sid())
    await session.add_items(_batch("up", 2))
    proxy.refuse = True
    proxy.cut()
    with pytest.raises((DBAPIError, OSError)):
        await session.get_items()
    with pytest.raises((DBAPIError, OSError)):
        await session.add_items(_batch("down", 2))
    proxy.refuse = False
    assert await session.get_items() == _batch("up", 2)
    await _assert_usable(session, _batch("up", 2))
