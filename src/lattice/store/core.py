"""The store's engine and transactions: what every other part of the store runs on.

Engine ownership:

* ``SessionStore(engine)`` uses the caller's engine and never disposes it.
* ``SessionStore.from_url(url)`` makes an engine of its own (not one of the
  process's shared ``from_url`` engines), and ``close()`` disposes exactly it.

The read engine (a replica's, ``read_engine=`` / ``read_url=``) answers the
catalogue reads that may lag (listing, counting, one session's row, export):
``read(..., replica=True)``. Everything else, every write and every read a
write depends on, runs on the primary engine. Without a replica both are
the same engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Select, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .. import engines, writes
from ..dialects import rules, statements
from ..schema import JOURNAL_DELETE, LatticeTables, utc_now

__all__ = ["StoreCore", "shielded_rows"]

_T = TypeVar("_T")


def _before_commit(exc: DBAPIError) -> bool:
    """True when the connection died on a statement, before COMMIT was sent.

    SQLAlchemy reports a failed COMMIT with no statement; only then can the
    transaction have committed, so only then is it not run again.
    """
    return exc.statement is not None


async def shielded_rows(conn: AsyncConnection, query: Select[Any]) -> list[Any]:
    """All rows of ``query``, read to the end even if the caller is cancelled meanwhile.

    A statement interrupted by a cancellation makes SQLAlchemy close its
    connection, and the one connection of an in-memory SQLite database is
    the database (the cancellation goes on once the chunk is read).
    """

    async def fetch() -> list[Any]:
        try:
            return list((await conn.execute(query)).all())
        except DBAPIError as exc:
            writes.check_schema(exc)
            raise

    return await writes.shielded(fetch)


class StoreCore:
    """An engine, a pair of tables and the limits the store applies on them."""

    def __init__(
        self,
        engine: AsyncEngine,
        tables: LatticeTables,
        *,
        create_tables: bool,
        max_item_bytes: int,
        owns_engine: bool = False,
        read_engine: AsyncEngine | None = None,
    ) -> None:
        self.engine = engine
        self.read_engine = engine if read_engine is None else read_engine
        self.tables = tables
        self.create_tables = create_tables
        self.max_item_bytes = max_item_bytes
        self.owns_engine = owns_engine
        self.owns_read_engine = False

    async def bind(self) -> engines.EngineState:
        """The engine's state, with the tables created first if asked."""
        state = engines.engine_state(self.engine)
        if not state.ready:
            await engines.check_ready(self.engine, state)
        if self.create_tables:
            await engines.ensure_tables(self.engine, state, self.tables)
        return state

    async def bind_read(self) -> tuple[AsyncEngine, engines.EngineState]:
        """The read engine and its state (checked once, like the primary's)."""
        await self.bind()
        if self.read_engine is self.engine:
            return self.engine, engines.engine_state(self.engine)
        state = engines.engine_state(self.read_engine)
        if not state.ready:
            await engines.check_ready(self.read_engine, state)
        return self.read_engine, state

    async def read(self, statement: Select[Any], *, replica: bool = False) -> list[Any]:
        """The rows of one read, on the read engine (a replica) if ``replica``.

        Run to its end even if the caller is cancelled (then the cancellation
        goes on): SQLAlchemy closes a connection whose statement was
        interrupted, and an in-memory SQLite database is that connection.
        """
        if replica:
            engine, state = await self.bind_read()
        else:
            engine, state = self.engine, await self.bind()

        async def run() -> list[Any]:
            for attempt in (1, 2):
                try:
                    async with state.exclusive(), engine.connect() as conn:
                        return list((await conn.execute(statement)).all())
                except DBAPIError as exc:
                    writes.check_schema(exc)
                    # A pooled connection that died while idle (a server
                    # restart): the pool is invalidated, one more try reconnects.
                    if attempt == 2 or not exc.connection_invalidated:
                        raise
            raise AssertionError("unreachable")

        return await writes.shielded(run)

    async def transact(self, body: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``body`` in one transaction, again when the server rolled it back.

        A concurrent creation of the same row (``IntegrityError``) also runs
        again: the second attempt finds the row.
        """
        state = await self.bind()

        async def attempt() -> _T:
            for tries in (1, 2):
                try:
                    async with state.exclusive(), engines.transaction(self.engine) as conn:
                        return await body(conn)
                except DBAPIError as exc:
                    # The connection died before COMMIT (a dead pooled connection):
                    # the server rolled everything back, so once more.
                    if tries == 2 or not exc.connection_invalidated or not _before_commit(exc):
                        raise
            raise AssertionError("unreachable")

        # Shielded like every write (lattice.writes): a cancelled caller
        # cannot leave it half done or close the connection under it.
        return await writes.shielded(
            lambda: writes.retry_conflicts(
                attempt, also=lambda exc: isinstance(exc, IntegrityError)
            )
        )

    def info_columns(self) -> Select[Any]:
        """``SELECT`` of the columns :meth:`SessionInfo.from_row` reads."""
        s = self.tables.sessions
        return select(
            s.c.session_id, s.c.created_at, s.c.updated_at, s.c.item_count, s.c.session_metadata
        )

    async def lock(self, conn: AsyncConnection, ids: list[str]) -> int:
        """Take the row locks of ``ids`` with a no-op write; return how many exist.

        A write, not ``SELECT ... FOR UPDATE``: on SQLite a transaction that
        reads first and writes later can fail at once with SQLITE_BUSY when
        another writer got in between, while one that starts by writing waits
        its turn (busy_timeout). Writers of a session lock its row first too,
        so the lock order is the same everywhere.
        """
        s = self.tables.sessions
        where = s.c.session_id == ids[0] if len(ids) == 1 else s.c.session_id.in_(ids)
        result = await conn.execute(update(s).where(where).values(item_count=s.c.item_count))
        return int(result.rowcount)

    async def lock_or_create(self, conn: AsyncConnection, session_id: str) -> bool:
        """Lock the session's row, creating it empty if missing; True if it existed.

        The row is created by the same upsert every write of a session starts
        with (:mod:`lattice.dialects`), the one place session rows are made.
        """
        if await self.lock(conn, [session_id]):
            return True
        upsert = statements(self.tables, conn.dialect).upsert_session
        params = {"sid": session_id, "now": utc_now(), "n": 0, "token": writes.new_token()}
        await conn.execute(upsert, params)
        return False

    async def journal_deletes(self, conn: AsyncConnection, ids: list[str]) -> None:
        """Record in the write journal that the sessions ``ids`` were deleted.

        A cancelled pop's put-back reads it: history deleted after the pop
        (a privacy erasure, say) must not come back, even if the session is
        started again under the same id.
        """
        journal = statements(self.tables, conn.dialect).journal_write
        await conn.execute(
            journal,
            [{"token": writes.new_token(), "sid": sid, "kind": JOURNAL_DELETE} for sid in ids],
        )

    async def max_packet(self) -> int | None:
        """MySQL's ``max_allowed_packet`` (read once per engine), or ``None`` elsewhere."""
        state = await self.bind()
        if not rules(self.engine.dialect).packet_limited:
            return None
        if state.max_packet is None:
            rows = await self.read(select(text("@@max_allowed_packet")))
            state.max_packet = int(rows[0][0])
        return state.max_packet
