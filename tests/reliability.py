"""Tools for the reliability tests: item ledgers, pauses at chosen statements, server-side kills.

Used by ``test_faults``, ``test_cancellation``, ``test_properties``, ``test_load``
and ``test_hostile``. Nothing here mocks the database: pauses stop the real
call right before (or after) its driver call, through the fast path's testing
hook (``EngineState.trace``) or, for statements that run through SQLAlchemy,
inside SQLAlchemy's greenlet; kills are issued by the server, and the proxy
forwards real bytes to the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from lattice import SQLAlchemySession
from lattice.engines import engine_state
from lattice.schema import LatticeTables


def session_on(
    engine: AsyncEngine, tables: LatticeTables, session_id: str, **kwargs: Any
) -> SQLAlchemySession:
    """A session on the test's own tables."""
    return SQLAlchemySession(
        session_id,
        engine=engine,
        sessions_table=tables.sessions.name,
        messages_table=tables.messages.name,
        **kwargs,
    )


async def stored(engine: AsyncEngine, tables: LatticeTables, session_id: str) -> list[Any]:
    """The session's items straight from the table, in id order (no session code involved)."""
    m = tables.messages
    query = select(m.c.message_data).where(m.c.session_id == session_id).order_by(m.c.id)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).scalars().all()
    return [json.loads(row) for row in rows]


async def stored_count(engine: AsyncEngine, tables: LatticeTables, session_id: str) -> int | None:
    """The session row's ``item_count`` (None when the row does not exist)."""
    s = tables.sessions
    async with engine.connect() as conn:
        return (
            await conn.execute(select(s.c.item_count).where(s.c.session_id == session_id))
        ).scalar()


# -- the item ledger ----------------------------------------------------------------


@dataclass
class Ledger:
    """Every batch offered to sessions, and what the callers were told.

    Items are ``{"id": "<batch>:<index>", ...}``. At the end, :meth:`check`
    compares the ledger with what the database holds:

    * no item is stored twice, popped twice, or both stored and popped;
    * every batch is whole: stored (in order) plus popped is the whole batch,
      unless nothing of it is stored (never committed, cleared, or popped
      entirely);
    * a confirmed batch that no clear could have touched is all there
      (stored or popped): nothing is lost;
    * stored items of one batch sit next to each other, in order.
    """

    batches: dict[str, list[str]] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    popped: list[str] = field(default_factory=list)
    clearable: set[str] = field(default_factory=set)
    #: Clears whose write may still be running (one whose caller was cancelled
    #: finishes in the background, at a moment the test cannot see).
    clears_in_flight: int = 0
    _next: int = 0

    def new_batch(self, prefix: str, size: int, pad: str = "") -> tuple[str, list[dict[str, Any]]]:
        self._next += 1
        batch_id = f"{prefix}{self._next}"
        ids = [f"{batch_id}:{i}" for i in range(size)]
        self.batches[batch_id] = ids
        if self.clears_in_flight:
            # A clear that began earlier may still commit after this batch does.
            self.clearable.add(batch_id)
        return batch_id, [{"id": item_id, "pad": pad} for item_id in ids]

    def clear_attempted(self) -> None:
        """A clear began: any batch offered so far, or until it ends, may legitimately vanish."""
        self.clearable.update(self.batches)
        self.clears_in_flight += 1

    def clear_finished(self) -> None:
        """A clear's call returned, so its write is over (not called for a cancelled clear)."""
        self.clears_in_flight -= 1

    def check(self, stored_ids: list[str]) -> None:
        stored_set, popped_set = set(stored_ids), set(self.popped)
        assert len(stored_set) == len(stored_ids), "an item is stored twice"
        assert len(popped_set) == len(self.popped), "an item was popped twice"
        assert not stored_set & popped_set, "a popped item is still stored"
        known = {item_id for ids in self.batches.values() for item_id in ids}
        assert stored_set <= known, "the database holds items nobody added"
        for batch_id, ids in self.batches.items():
            here = [i for i in ids if i in stored_set]
            gone = {i for i in ids if i in popped_set}
            if here:
                in_db_order = [i for i in stored_ids if i.split(":")[0] == batch_id]
                assert in_db_order == here, f"batch {batch_id} stored out of order"
                # Pops take the newest item, but a pop running while a cancelled
                # pop puts its item back takes the one below it: a hole, never a loss.
                assert set(here) | gone == set(ids), f"batch {batch_id} stored partially"
            elif batch_id in self.confirmed and batch_id not in self.clearable:
                assert gone == set(ids), f"confirmed batch {batch_id} lost items"
        runs = [item_id.split(":")[0] for item_id in stored_ids]
        seen: set[str] = set()
        for index, batch_id in enumerate(runs):
            if index and runs[index - 1] == batch_id:
                continue
            assert batch_id not in seen, f"batch {batch_id} is not contiguous"
            seen.add(batch_id)


# -- pausing a session at a chosen statement ---------------------------------------------


# Pauses waiting on each engine. The SQLAlchemy listeners are installed once by
# instrument() and never removed: adding or removing one while a paused listener
# sits inside SQLAlchemy's listener loop would break that loop.
_PAUSES: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
# Server ids of each engine's open connections, and each PostgreSQL backend's start.
_LIVE: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()
_STARTED: dict[int, Any] = {}


def instrument(engine: AsyncEngine) -> None:
    """Prepare ``engine`` for :class:`Pause` and :func:`server_ids`.

    Each new connection records its server-side id (backend pid / connection
    id); the statement and COMMIT hooks consult the engine's active pauses.
    The hooks are installed twice over: as the fast path's ``trace`` hook
    (sessions' statements) and as SQLAlchemy events (anything that runs
    through SQLAlchemy's execution, such as engines without a fast path).
    """
    sync_engine = engine.sync_engine
    if sync_engine in _PAUSES:
        return
    pauses: list[Any] = []  # Pause, CancelAt: objects with wants() and halt()
    _PAUSES[sync_engine] = pauses
    # On PostgreSQL a pid can be reused by another backend once ours ended,
    # so a kill also checks the backend's start time: never someone else's.
    query = (
        "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        if engine.dialect.name == "postgresql"
        else "SELECT CONNECTION_ID(), NULL"
    )

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(query)
            server_id, started = cursor.fetchone()
        finally:
            cursor.close()
        record.info["server_id"] = int(server_id)
        _STARTED[int(server_id)] = started
        _LIVE.setdefault(sync_engine, set()).add(int(server_id))

    @event.listens_for(sync_engine, "close")
    def _on_close(_dbapi_connection: Any, record: Any) -> None:
        _LIVE.get(sync_engine, set()).discard(record.info.get("server_id"))

    def hook(when: str) -> Callable[..., None]:
        def _hook(conn: Any, *args: Any) -> None:
            statement = args[1] if args else None
            for pause in list(pauses):
                if pause.wants(when, statement):
                    # Inside SQLAlchemy's greenlet: wait there on the event loop.
                    await_only(pause.halt(conn.connection.info))
                    return

        return _hook

    for when in ("before_cursor_execute", "after_cursor_execute", "commit"):
        event.listen(sync_engine, when, hook(when))

    async def trace(when: str, statement: str | None, info: dict[Any, Any]) -> None:
        for pause in list(pauses):
            if pause.wants(when, statement):
                await pause.halt(info)
                return

    engine_state(engine).trace = trace


class Pause:
    """Stop the engine's matching statements (or COMMITs) until :meth:`release`.

    The session's call is genuinely suspended at that point (in the fast
    path's trace hook, or inside SQLAlchemy's greenlet), with its transaction
    open on the server. Call :func:`instrument` on the engine first.

    Args:
        engine: The engine the session under test uses.
        match: Pause before each statement whose SQL satisfies it, or, with
            ``match=None``, at each COMMIT.
        after: Pause after the statement ran instead of before it.
        times: How many matches to pause at before disarming.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        match: Callable[[str], bool] | None = None,
        *,
        after: bool = False,
        times: int = 1,
    ) -> None:
        self.reached = asyncio.Event()
        self._go = asyncio.Event()
        self.server_id: int | None = None
        self._left = times
        self._match = match
        if match is None:
            self._when = "commit"
        else:
            self._when = "after_cursor_execute" if after else "before_cursor_execute"
        self._pauses = _PAUSES[engine.sync_engine]
        self._pauses.append(self)

    def wants(self, when: str, statement: str | None) -> bool:
        if self._left <= 0 or when != self._when:
            return False
        return self._match is None or (statement is not None and self._match(statement))

    async def halt(self, info: dict[Any, Any]) -> None:
        self._left -= 1
        self.server_id = info.get("server_id")
        go = self._go
        self.reached.set()
        await go.wait()

    async def wait(self, timeout: float = 20) -> int:
        """Wait until the session reached the pause point; return its server id."""
        await asyncio.wait_for(self.reached.wait(), timeout)
        assert self.server_id is not None, "instrument(engine) was not called"
        return self.server_id

    def release(self) -> None:
        """Let the paused call go on (and be ready for the next match)."""
        go, self._go = self._go, asyncio.Event()
        self.reached = asyncio.Event()
        go.set()

    def close(self) -> None:
        """Disarm, and let any call still paused go on."""
        self._left = 0
        if self in self._pauses:
            self._pauses.remove(self)
        self._go.set()


async def kill(admin: AsyncEngine, server_id: int) -> None:
    """End one of our connections from the server side (gone already is fine)."""
    async with admin.connect() as conn:
        if admin.dialect.name != "postgresql":
            with contextlib.suppress(DBAPIError):  # "Unknown thread id": already gone
                await conn.execute(text(f"KILL {int(server_id)}"))
            return
        ours = "pid = :pid AND backend_start = :start"
        params = {"pid": server_id, "start": _STARTED[server_id]}
        await conn.execute(
            text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {ours}"), params
        )
        # pg_terminate_backend only signals; wait until the backend is gone.
        for _ in range(500):
            alive = await conn.execute(
                text(f"SELECT count(*) FROM pg_stat_activity WHERE {ours}"), params
            )
            if not alive.scalar():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"backend {server_id} did not end")


def server_ids(engine: AsyncEngine) -> list[int]:
    """Server-side ids of every connection the engine holds open (as far as it knows)."""
    return sorted(_LIVE.get(engine.sync_engine, set()))


class CancelAt:
    """Cancel ``task`` when the engine reaches its ``n``-th statement or COMMIT (from 0).

    The cancellation is requested from inside the driver call, so the caller
    is cancelled exactly while its write is at that point.
    """

    def __init__(self, engine: AsyncEngine, task: asyncio.Task[Any], n: int) -> None:
        self._task, self._left = task, n
        self.fired = False
        self._pauses = _PAUSES[engine.sync_engine]
        self._pauses.append(self)

    def wants(self, when: str, _statement: str | None) -> bool:
        if self.fired or when == "after_cursor_execute":
            return False
        self._left -= 1
        return self._left < 0

    async def halt(self, _info: dict[Any, Any]) -> None:
        self.fired = True
        self._task.cancel()
        self._pauses.remove(self)


async def settle(timeout: float = 30) -> None:
    """Wait until every other task (a shielded write a cancelled caller left running) ended."""
    caller = asyncio.current_task()

    async def wait_all() -> None:
        waiters = {caller, asyncio.current_task()}
        while others := [t for t in asyncio.all_tasks() if t not in waiters]:
            await asyncio.wait(others)

    await asyncio.wait_for(wait_all(), timeout)  # asyncio.timeout needs Python 3.11


# -- a TCP proxy that can drop replies and cut connections ----------------------------------


class Proxy:
    """A loopback TCP proxy in front of a real server, for faults a kill cannot make.

    ``swallow_replies`` drops everything the server sends (the client's
    statements still arrive), ``cut()`` closes every open connection, and
    ``refuse`` turns new connections away, as a server that is down would.
    """

    def __init__(self, url: str) -> None:
        self._target = make_url(url)
        self.swallow_replies = False
        self.refuse = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.engine: AsyncEngine  # the engine the test connects through it

    def url(self) -> URL:
        return self._target.set(host="127.0.0.1", port=self.port)

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refuse:
            client_w.transport.abort()
            return
        target_port = self._target.port or (5432 if "postgres" in self._target.drivername else 3306)
        try:
            server_r, server_w = await asyncio.open_connection(
                self._target.host or "127.0.0.1", target_port
            )
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        await asyncio.gather(
            self._pump(client_r, server_w, replies=False),
            self._pump(server_r, client_w, replies=True),
            return_exceptions=True,
        )
        for writer in (client_w, server_w):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        while data := await reader.read(65536):
            if replies and self.swallow_replies:
                continue
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def engine_for(url: str | URL, **kwargs: Any) -> AsyncIterator[AsyncEngine]:
    """A Lattice-configured engine, disposed at the end."""
    from lattice.engines import make_engine

    engine = make_engine(url, **kwargs)
    try:
        yield engine
    finally:
        await engine.dispose()
