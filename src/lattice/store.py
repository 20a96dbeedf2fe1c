"""``SessionStore``: one engine, many sessions, and the catalogue over them.

A store hands out sessions that share its engine, and answers the questions
an application asks about all of its conversations: which sessions a user
has, when each was last active and how long it is, and it deletes, expires,
exports, imports and copies them.

Engine ownership:

* ``SessionStore(engine)`` uses the caller's engine and never disposes it.
* ``SessionStore.from_url(url)`` makes an engine of its own (not one of the
  process's shared ``from_url`` engines), and :meth:`SessionStore.close`, or
  leaving ``async with``, disposes exactly that engine.

Sessions from :meth:`SessionStore.session` run on the store's engine; they
stop working once a store that owns its engine is closed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import engines
from .dialects import is_transient_conflict
from .items import DEFAULT_MAX_ITEM_BYTES
from .schema import (
    DEFAULT_MESSAGES_TABLE,
    DEFAULT_SESSIONS_TABLE,
    LatticeTables,
    lattice_tables,
    utc_now,
)
from .sqlalchemy_session import SQLAlchemySession, check_session_id
from .store_query import (
    DeleteResult,
    ExportResult,
    FilterArgs,
    Filters,
    ImportResult,
    SessionInfo,
    decode_cursor,
    decode_metadata,
    encode_cursor,
    encode_metadata,
    keyset_after,
    keyset_before,
    merge_patch,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .protocol import SessionSettings

__all__ = [
    "DeleteResult",
    "ExportResult",
    "ImportResult",
    "SessionInfo",
    "SessionPage",
    "SessionStore",
]

_T = TypeVar("_T")
# How often a transaction the server rolled back (deadlock, lock timeout, a
# concurrent creation of the same row) is run again.
_RETRIES = 5
#: Most items one retention transaction deletes (and so holds locks on).
#: 5,000 rows keep each transaction in the low milliseconds on all three
#: databases while the per-transaction overhead stays small.
DEFAULT_BATCH_ITEMS = 5000
# Sessions read per query while walking the catalogue.
_WALK_CHUNK = 500
#: Largest page list_sessions returns.
MAX_PAGE = 1000
_PROBE_ID = "lattice-store"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SessionPage:
    """One page of :meth:`SessionStore.list_sessions`.

    Attributes:
        sessions: The sessions, newest activity first.
        next_cursor: Pass it as ``cursor=`` for the next page; ``None`` on the last.
    """

    sessions: list[SessionInfo]
    next_cursor: str | None

    def __iter__(self) -> Any:
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self.sessions)


@dataclass
class _Group:
    ids: list[str] = field(default_factory=list)
    items: int = 0


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


class SessionStore:
    """Sessions on one engine, and the catalogue of all of them.

    Args:
        engine: An ``AsyncEngine``; it stays the caller's and is never disposed.
        create_tables: Create the tables (if missing) on first use, as sessions do.
        sessions_table: Name of the sessions table.
        messages_table: Name of the messages table.
        max_item_bytes: Largest item the store's sessions (and imports) accept.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        create_tables: bool = False,
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        engines.check_engine(engine, "SessionStore")
        self._engine = engine
        self._owns_engine = False
        self._tables = lattice_tables(sessions_table, messages_table)
        self._create_tables = create_tables
        self._max_item_bytes = _check_positive(max_item_bytes, "max_item_bytes")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        create_tables: bool = False,
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        **engine_kwargs: Any,
    ) -> SessionStore:
        """Make a store on a new engine of its own for ``url``.

        The store owns that engine: :meth:`close` (or leaving ``async with``)
        disposes it. ``postgresql://``, ``mysql://`` and ``sqlite://`` URLs
        are mapped to the async drivers; ``engine_kwargs`` go to
        ``create_async_engine``.
        """
        store = cls(
            engines.make_engine(url, **engine_kwargs),
            create_tables=create_tables,
            sessions_table=sessions_table,
            messages_table=messages_table,
            max_item_bytes=max_item_bytes,
        )
        store._owns_engine = True
        return store

    @property
    def engine(self) -> AsyncEngine:
        """The store's engine."""
        return self._engine

    @property
    def tables(self) -> LatticeTables:
        """The store's tables."""
        return self._tables

    async def close(self) -> None:
        """Dispose of the engine if the store made it; an engine passed in is left alone."""
        if self._owns_engine:
            await self._engine.dispose()

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"SessionStore({url!r}, sessions_table={self._tables.sessions.name!r})"

    def session(
        self,
        session_id: str,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> SQLAlchemySession:
        """A session on the store's engine and tables (no I/O, no new pool)."""
        return SQLAlchemySession(
            session_id,
            engine=self._engine,
            create_tables=self._create_tables,
            sessions_table=self._tables.sessions.name,
            messages_table=self._tables.messages.name,
            session_settings=session_settings,
            max_item_bytes=self._max_item_bytes,
        )

    # -- plumbing ------------------------------------------------------------

    async def _bind(self) -> engines.EngineState:
        state = engines.engine_state(self._engine)
        if self._create_tables and self._tables not in state.created:
            # A session creates the tables once per engine, under the engine's
            # lock; reuse that rather than a second copy of the logic.
            await self.session(_PROBE_ID)._bind()
        return state

    async def _read(self, statement: Select[Any]) -> list[Any]:
        state = await self._bind()
        async with state.exclusive(), self._engine.connect() as conn:
            return list((await conn.execute(statement)).all())

    async def _transact(self, body: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``body`` in one transaction, again when the server rolled it back."""
        state = await self._bind()
        attempt = 0
        while True:
            try:
                async with state.exclusive(), self._engine.begin() as conn:
                    return await body(conn)
            except DBAPIError as exc:
                conflict = isinstance(exc, IntegrityError) or is_transient_conflict(exc)
                if not conflict or attempt >= _RETRIES:
                    raise
                attempt += 1
                await asyncio.sleep(0.005 * attempt)

    def _info_columns(self) -> Select[Any]:
        s = self._tables.sessions
        return select(
            s.c.session_id, s.c.created_at, s.c.updated_at, s.c.item_count, s.c.session_metadata
        )

    async def _lock(self, conn: AsyncConnection, ids: list[str]) -> int:
        """Take the row locks of ``ids`` with a no-op write; return how many exist.

        A write, not ``SELECT ... FOR UPDATE``: on SQLite a transaction that
        reads first and writes later can fail at once with SQLITE_BUSY when
        another writer got in between, while one that starts by writing waits
        its turn (busy_timeout). Writers of a session lock its row first too,
        so the lock order is the same everywhere.
        """
        s = self._tables.sessions
        where = s.c.session_id == ids[0] if len(ids) == 1 else s.c.session_id.in_(ids)
        result = await conn.execute(update(s).where(where).values(item_count=s.c.item_count))
        return int(result.rowcount)

    # -- the catalogue ---------------------------------------------------------

    async def get_info(self, session_id: str) -> SessionInfo | None:
        """The catalogue row of ``session_id``, or ``None`` if there is no such session."""
        check_session_id(session_id)
        rows = await self._read(
            self._info_columns().where(self._tables.sessions.c.session_id == session_id)
        )
        return SessionInfo.from_row(rows[0]) if rows else None

    async def set_metadata(
        self, session_id: str, metadata: Mapping[str, Any], *, replace: bool = False
    ) -> SessionInfo:
        """Change a session's metadata and return its new catalogue row.

        By default ``metadata`` is merged into what is stored, as a JSON Merge
        Patch (RFC 7396): its keys replace the stored ones, a ``None`` value
        removes a key, and dict values merge recursively. With
        ``replace=True`` the stored metadata becomes exactly ``metadata``.
        The merge reads and writes under the session's row lock, so
        concurrent merges of different keys all land.

        A session with no row yet gets one, with no items, so a conversation
        can be labelled before its first turn. Metadata changes are not
        activity: ``updated_at`` stays as it was.

        The ``"owner"`` key, if present, must be a string of 1 to 255
        characters; it is what ``owner=`` filters match, through an index.

        Raises:
            TypeError: ``metadata`` is not a dict or holds a non-JSON value.
            ValueError: the result is over 65,535 bytes of JSON, or the owner is invalid.
        """
        check_session_id(session_id)
        if replace:
            encode_metadata(metadata)
        else:
            encode_metadata({k: v for k, v in dict(metadata).items() if k != "owner"})
        s = self._tables.sessions
        this = s.c.session_id == session_id

        async def body(conn: AsyncConnection) -> SessionInfo:
            if not await self._lock(conn, [session_id]):
                now = utc_now()
                await conn.execute(
                    insert(s).values(
                        session_id=session_id,
                        created_at=now,
                        updated_at=now,
                        item_count=0,
                        write_tokens="",
                    )
                )
            current = (await conn.execute(select(s.c.session_metadata).where(this))).scalar()
            new = dict(metadata) if replace else merge_patch(decode_metadata(current), metadata)
            text, owner = encode_metadata(new)
            await conn.execute(update(s).where(this).values(session_metadata=text, owner=owner))
            row = (await conn.execute(self._info_columns().where(this))).one()
            return SessionInfo.from_row(row)

        return await self._transact(body)

    async def iter_sessions(
        self, *, newest_first: bool = True, **filters: Unpack[FilterArgs]
    ) -> AsyncIterator[SessionInfo]:
        """Every matching session, in activity order, read a chunk at a time.

        No connection is held between chunks, so the caller may write while
        iterating. The filters are those of :meth:`list_sessions`.
        """
        async for info in self._walk(Filters.make(**filters), newest_first=newest_first):
            yield info

    async def _walk(
        self,
        filters: Filters,
        *,
        newest_first: bool,
        start: tuple[dt.datetime, str] | None = None,
        chunk: int = _WALK_CHUNK,
    ) -> AsyncIterator[SessionInfo]:
        s = self._tables.sessions
        conditions = filters.where(self._tables, self._engine.dialect)
        if newest_first:
            order = [s.c.updated_at.desc(), s.c.session_id.desc()]
            after = keyset_before
        else:
            order = [s.c.updated_at.asc(), s.c.session_id.asc()]
            after = keyset_after
        position = start
        while True:
            query = self._info_columns().where(*conditions)
            if position is not None:
                query = query.where(after(self._tables, *position))
            rows = await self._read(query.order_by(*order).limit(chunk))
            for row in rows:
                info = SessionInfo.from_row(row)
                if filters.matches_metadata(info.metadata):
                    yield info
            if len(rows) < chunk:
                return
            position = (rows[-1][2], rows[-1][0])

    async def list_sessions(
        self,
        *,
        prefix: str | None = None,
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        updated_after: dt.datetime | None = None,
        updated_before: dt.datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of sessions, newest activity first.

        Args:
            prefix: Only ids that start with this text (exact, case-sensitive).
            owner: Only sessions whose metadata ``"owner"`` is this (indexed).
            metadata: Only sessions whose metadata has each of these top-level
                keys with an equal value (matched in Python; ``"owner"`` is
                folded into ``owner``).
            updated_after: Only sessions last active after this aware datetime.
            updated_before: Only sessions last active before this aware datetime.
            limit: Page size, 1 to 1,000.
            cursor: ``next_cursor`` of the previous page; ``None`` for the first.

        Pages are cut by keyset on ``(updated_at, session_id)``, so a page
        costs the same however deep it is, and a session written between two
        pages moves to the front rather than shifting the others.
        """
        _check_positive(limit, "limit")
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be at most {MAX_PAGE}, not {limit}")
        filters = Filters.make(
            prefix=prefix,
            owner=owner,
            metadata=metadata,
            updated_after=updated_after,
            updated_before=updated_before,
        )
        start = None if cursor is None else decode_cursor(cursor)
        chunk = limit + 1 if not filters.metadata else max(limit + 1, _WALK_CHUNK)
        found: list[SessionInfo] = []
        async for info in self._walk(filters, newest_first=True, start=start, chunk=chunk):
            found.append(info)
            if len(found) > limit:
                break
        if len(found) <= limit:
            return SessionPage(found, None)
        last = found[limit - 1]
        return SessionPage(found[:limit], encode_cursor(last.updated_at, last.session_id))

    async def count(self, **filters: Unpack[FilterArgs]) -> int:
        """How many sessions match (the filters of :meth:`list_sessions`)."""
        return (await self.totals(**filters))[0]

    async def totals(self, **filter_args: Unpack[FilterArgs]) -> tuple[int, int]:
        """``(sessions, items)`` over the matching sessions (for progress bars)."""
        filters = Filters.make(**filter_args)
        if filters.metadata:
            sessions = items = 0
            async for info in self._walk(filters, newest_first=True):
                sessions += 1
                items += info.item_count
            return sessions, items
        s = self._tables.sessions
        query = select(func.count(), func.coalesce(func.sum(s.c.item_count), 0)).where(
            *filters.where(self._tables, self._engine.dialect)
        )
        row = (await self._read(query))[0]
        return int(row[0]), int(row[1])

    # -- retention -------------------------------------------------------------

    async def delete_session(
        self, session_id: str, *, batch_items: int = DEFAULT_BATCH_ITEMS
    ) -> DeleteResult:
        """Delete one session and its items; ``DeleteResult(0, 0)`` if it did not exist.

        A long session is deleted oldest items first, ``batch_items`` per
        transaction, with its ``item_count`` kept exact between batches.
        """
        check_session_id(session_id)
        _check_positive(batch_items, "batch_items")
        return await self._delete_one(session_id, Filters(), batch_items)

    async def delete_sessions(
        self,
        *,
        batch_items: int = DEFAULT_BATCH_ITEMS,
        progress: Progress | None = None,
        **filter_args: Unpack[FilterArgs],
    ) -> DeleteResult:
        """Delete every session the filters of :meth:`list_sessions` match (give at least one).

        Works in transactions of at most ``batch_items`` items (small sessions
        are deleted many to a transaction), rechecking the filters under the
        row locks, so a session that stops matching meanwhile is kept.
        ``progress`` is called with the number of sessions each step deleted.

        Raises:
            ValueError: no filter was given.
        """
        filters = Filters.make(**filter_args)
        if filters.empty:
            raise ValueError(
                "delete_sessions needs a filter (owner, prefix, metadata or a time bound); "
                "it never deletes every session"
            )
        _check_positive(batch_items, "batch_items")
        return await self._delete_matching(filters, batch_items, progress)

    async def purge(
        self,
        older_than: dt.timedelta,
        *,
        batch_items: int = DEFAULT_BATCH_ITEMS,
        progress: Progress | None = None,
    ) -> DeleteResult:
        """Delete the sessions with no activity for longer than ``older_than``.

        The cut-off is taken once, at the start. See :meth:`delete_sessions`
        for batching and ``progress``.
        """
        if not isinstance(older_than, dt.timedelta):
            raise TypeError(f"older_than must be a timedelta, not {type(older_than).__name__}")
        if older_than < dt.timedelta(0):
            raise ValueError("older_than must not be negative")
        return await self.delete_sessions(
            updated_before=utc_now() - older_than, batch_items=batch_items, progress=progress
        )

    async def _delete_matching(
        self, filters: Filters, batch_items: int, progress: Progress | None
    ) -> DeleteResult:
        total = DeleteResult()
        group = _Group()

        async def flush() -> None:
            if group.ids:
                done = await self._delete_group(group.ids, filters)
                total.add(done)
                if progress is not None:
                    progress(done.sessions)
                group.ids, group.items = [], 0

        # Oldest first: the order purge wants, and an index range on updated_at.
        async for info in self._walk(filters, newest_first=False):
            if info.item_count > batch_items:
                done = await self._delete_one(info.session_id, filters, batch_items)
                total.add(done)
                if progress is not None:
                    progress(done.sessions)
                continue
            if group.items + info.item_count > batch_items or len(group.ids) >= _WALK_CHUNK:
                await flush()
            group.ids.append(info.session_id)
            group.items += info.item_count
        await flush()
        return total

    async def _delete_group(self, ids: list[str], filters: Filters) -> DeleteResult:
        """Delete the sessions of ``ids`` that still match, in one transaction."""
        s, m = self._tables.sessions, self._tables.messages

        async def body(conn: AsyncConnection) -> DeleteResult:
            await self._lock(conn, ids)
            query = select(s.c.session_id, s.c.session_metadata).where(
                s.c.session_id.in_(ids), *filters.where(self._tables, conn.dialect)
            )
            rows = (await conn.execute(query)).all()
            doomed = [r[0] for r in rows if filters.matches_metadata(decode_metadata(r[1]))]
            if not doomed:
                return DeleteResult()
            items = await conn.execute(delete(m).where(m.c.session_id.in_(doomed)))
            sessions = await conn.execute(delete(s).where(s.c.session_id.in_(doomed)))
            return DeleteResult(int(sessions.rowcount), int(items.rowcount))

        return await self._transact(body)

    async def _delete_one(
        self, session_id: str, filters: Filters, batch_items: int
    ) -> DeleteResult:
        """Delete one session in transactions of at most ``batch_items`` items."""
        s, m = self._tables.sessions, self._tables.messages
        this = s.c.session_id == session_id
        its_items = m.c.session_id == session_id

        async def step(conn: AsyncConnection) -> tuple[DeleteResult, bool]:
            if not await self._lock(conn, [session_id]):
                return DeleteResult(), True
            query = select(s.c.session_metadata).where(
                this, *filters.where(self._tables, conn.dialect)
            )
            rows = (await conn.execute(query)).all()
            if not rows or not filters.matches_metadata(decode_metadata(rows[0][0])):
                return DeleteResult(), True  # it stopped matching: keep the rest
            edge = (
                await conn.execute(
                    select(m.c.id)
                    .where(its_items)
                    .order_by(m.c.id)
                    .offset(batch_items - 1)
                    .limit(1)
                )
            ).scalar()
            if edge is None:
                items = await conn.execute(delete(m).where(its_items))
                await conn.execute(delete(s).where(this))
                return DeleteResult(1, int(items.rowcount)), True
            items = await conn.execute(delete(m).where(its_items, m.c.id <= edge))
            await conn.execute(
                update(s).where(this).values(item_count=s.c.item_count - items.rowcount)
            )
            return DeleteResult(0, int(items.rowcount)), False

        total = DeleteResult()
        finished = False
        while not finished:
            done, finished = await self._transact(step)
            total.add(done)
        return total

    # -- export, import, copy ----------------------------------------------------

    async def export_jsonl(
        self,
        destination: str | Path | IO[str],
        *,
        prefix: str | None = None,
        owner: str | None = None,
        progress: Progress | None = None,
    ) -> ExportResult:
        """Write sessions, their metadata and items as JSON Lines (see ``docs/store.md``).

        Streams in bounded memory: sessions are read by keyset a chunk at a
        time and each session's items through a server-side cursor.
        ``progress`` is called with the number of items each step wrote.
        """
        from .store_export import export_jsonl

        return await export_jsonl(self, destination, prefix=prefix, owner=owner, progress=progress)

    async def import_jsonl(
        self,
        source: str | Path | IO[str],
        *,
        on_conflict: str,
        progress: Progress | None = None,
    ) -> ImportResult:
        """Load a file written by :meth:`export_jsonl`.

        The whole file is checked before anything is written, so a damaged or
        truncated file changes nothing. ``on_conflict`` says what happens to a
        session that already exists: ``"skip"`` keeps it untouched,
        ``"replace"`` deletes it first, ``"append"`` adds the imported items
        after its own and merges the metadata.

        Raises:
            ValueError: the file is not a valid export, or ``on_conflict`` is unknown.
        """
        from .store_export import import_jsonl

        return await import_jsonl(self, source, on_conflict=on_conflict, progress=progress)

    async def copy_to(
        self,
        other: SessionStore,
        *,
        on_conflict: str,
        prefix: str | None = None,
        owner: str | None = None,
        progress: Progress | None = None,
    ) -> ImportResult:
        """Copy sessions (items in order, timestamps, metadata) into ``other``.

        The same stream as an export followed by an import, with no file in
        between; ``on_conflict`` is that of :meth:`import_jsonl`.
        """
        from .store_export import copy_sessions

        return await copy_sessions(
            self, other, on_conflict=on_conflict, prefix=prefix, owner=owner, progress=progress
        )
