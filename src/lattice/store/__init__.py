"""``SessionStore``: one engine, many sessions, and the catalogue over them.

A store hands out sessions that share its engine, and answers the questions
an application asks about all of its conversations: which sessions a user
has, when each was last active and how long it is, and it deletes, expires,
exports, imports and copies them.

The package, one part a module (no module imports one above it):
``core`` (engine, tables, transactions), ``model`` (what calls return, the
metadata codec), ``listing`` (filters, cursors, the walk), ``catalogue``
(one session's row and metadata), ``retention`` (deletion), ``jsonl`` (the
export format, pure), ``transfer`` (export, import, copy over ``core``).

Engine ownership:

* ``SessionStore(engine)`` uses the caller's engine and never disposes it.
* ``SessionStore.from_url(url)`` makes an engine of its own (not one of the
  process's shared ``from_url`` engines), and :meth:`SessionStore.close`, or
  leaving ``async with``, disposes exactly that engine.

Sessions from :meth:`SessionStore.session` run on the store's engine; they
stop working once a store that owns its engine is closed.

A read replica (``read_engine=`` / ``read_url=``) answers listing, counting,
:meth:`SessionStore.get_info` and export; a read engine passed in is the
caller's, one made from ``read_url`` is disposed by :meth:`SessionStore.close`.
Sessions, every write, retention and the reads writes depend on stay on the
primary engine (docs/scale.md says why).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import engines, urls
from ..dialects import rules
from ..items import DEFAULT_MAX_ITEM_BYTES, check_session_id
from ..schema import (
    DEFAULT_MESSAGES_TABLE,
    DEFAULT_SESSIONS_TABLE,
    LatticeTables,
    lattice_tables,
    utc_now,
)
from ..sqlalchemy_session import SQLAlchemySession
from . import catalogue, retention, transfer
from .core import StoreCore
from .listing import WALK_CHUNK, FilterArgs, Filters, decode_cursor, encode_cursor, walk
from .model import (
    DeleteResult,
    ExportResult,
    ImportResult,
    OnConflict,
    SessionInfo,
    SessionPage,
)
from .retention import DEFAULT_BATCH_ITEMS, Progress

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..protocol import SessionSettings

__all__ = [
    "DEFAULT_BATCH_ITEMS",
    "DeleteResult",
    "ExportResult",
    "ImportResult",
    "SessionInfo",
    "SessionPage",
    "SessionStore",
]

#: Largest page list_sessions returns.
MAX_PAGE = 1000


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
        read_engine: An ``AsyncEngine`` on a replica of the same database, for
            listing, counting, ``get_info`` and export; the caller's, never
            disposed. Sessions and writes always use ``engine``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        create_tables: bool = False,
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        read_engine: AsyncEngine | None = None,
    ) -> None:
        engines.check_engine(engine, "SessionStore")
        if read_engine is not None:
            engines.check_engine(read_engine, "SessionStore")
            kind, read_kind = rules(engine.dialect).name, rules(read_engine.dialect).name
            if read_kind != kind:
                raise ValueError(
                    "read_engine must be a replica of the same database: "
                    f"a {kind} engine's replica is not {read_kind}"
                )
        self._core = StoreCore(
            engine,
            lattice_tables(sessions_table, messages_table),
            create_tables=create_tables,
            max_item_bytes=_check_positive(max_item_bytes, "max_item_bytes"),
            read_engine=read_engine,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        create_tables: bool = False,
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        engine_kwargs: dict[str, Any] | None = None,
        read_url: str | None = None,
        **engine_options: Any,
    ) -> SessionStore:
        """Make a store on a new engine of its own for ``url``.

        The store owns that engine: :meth:`close` (or leaving ``async with``)
        disposes it. ``postgresql://``, ``mysql://`` and ``sqlite://`` URLs
        are mapped to the async drivers. Options for ``create_async_engine``
        go in ``engine_kwargs={...}``, as for ``SQLAlchemySession.from_url``,
        or as keywords (``pool_size=5``).

        ``read_url`` names a replica of the same database (a hot standby):
        listing, counting, ``get_info`` and export read there, on an engine
        made with the same options and disposed by :meth:`close` too.
        """
        # Both spellings, so the two from_url methods take the same arguments.
        options = {**(engine_kwargs or {}), **engine_options}
        engine = engines.make_engine(url, **options)
        read_engine = None if read_url is None else engines.make_engine(read_url, **options)
        store = cls(
            engine,
            create_tables=create_tables,
            sessions_table=sessions_table,
            messages_table=messages_table,
            max_item_bytes=max_item_bytes,
            read_engine=read_engine,
        )
        store._core.owns_engine = True
        store._core.owns_read_engine = read_engine is not None
        return store

    @property
    def engine(self) -> AsyncEngine:
        """The store's engine."""
        return self._core.engine

    @property
    def read_engine(self) -> AsyncEngine:
        """The engine catalogue reads and export use: the replica's, else :attr:`engine`."""
        return self._core.read_engine

    @property
    def tables(self) -> LatticeTables:
        """The store's tables."""
        return self._core.tables

    async def close(self) -> None:
        """Dispose of the engines the store made; engines passed in are left alone."""
        core = self._core
        try:
            if core.owns_read_engine:
                await core.read_engine.dispose()
        finally:
            if core.owns_engine:
                await core.engine.dispose()

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        url = urls.shown(self.engine.url)  # no password, also not in the query string
        return f"SessionStore({url!r}, sessions_table={self.tables.sessions.name!r})"

    def session(
        self,
        session_id: str,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> SQLAlchemySession:
        """A session on the store's engine and tables (no I/O, no new pool)."""
        return SQLAlchemySession(
            session_id,
            engine=self._core.engine,
            create_tables=self._core.create_tables,
            sessions_table=self._core.tables.sessions.name,
            messages_table=self._core.tables.messages.name,
            session_settings=session_settings,
            max_item_bytes=self._core.max_item_bytes,
        )

    # -- the catalogue ---------------------------------------------------------

    async def get_info(self, session_id: str) -> SessionInfo | None:
        """The catalogue row of ``session_id``, or ``None`` if there is no such session."""
        return await catalogue.get_info(self._core, session_id)

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
        return await catalogue.set_metadata(self._core, session_id, metadata, replace=replace)

    async def iter_sessions(
        self, *, newest_first: bool = True, **filters: Unpack[FilterArgs]
    ) -> AsyncIterator[SessionInfo]:
        """Every matching session, in activity order, read a chunk at a time.

        No connection is held between chunks, so the caller may write while
        iterating. The filters are those of :meth:`list_sessions`.
        """
        filters_ = Filters.make(**filters)
        async for info in walk(self._core, filters_, newest_first=newest_first, replica=True):
            yield info

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
        chunk = limit + 1 if not filters.metadata else max(limit + 1, WALK_CHUNK)
        found: list[SessionInfo] = []
        async for info in walk(
            self._core, filters, newest_first=True, start=start, chunk=chunk, replica=True
        ):
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
            async for info in walk(self._core, filters, newest_first=True, replica=True):
                sessions += 1
                items += info.item_count
            return sessions, items
        s = self._core.tables.sessions
        query = select(func.count(), func.coalesce(func.sum(s.c.item_count), 0)).where(
            *filters.where(self._core.tables, self._core.engine.dialect)
        )
        row = (await self._core.read(query, replica=True))[0]
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
        return await retention.delete_one(self._core, session_id, Filters(), batch_items)

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
        return await retention.delete_matching(self._core, filters, batch_items, progress)

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

    # -- export, import, copy ----------------------------------------------------

    async def export_jsonl(
        self,
        destination: str | Path | IO[str],
        *,
        progress: Progress | None = None,
        **filters: Unpack[FilterArgs],
    ) -> ExportResult:
        """Write sessions, their metadata and items as JSON Lines (see ``docs/store.md``).

        Streams in bounded memory: sessions are read by keyset a chunk at a
        time and each session's items by keyset, a chunk at a time.
        ``progress`` is called with the number of items each step wrote.
        The filters are those of :meth:`list_sessions`.
        """
        return await transfer.export_jsonl(self._core, destination, filters, progress=progress)

    async def import_jsonl(
        self,
        source: str | Path | IO[str],
        *,
        on_conflict: OnConflict,
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
        return await transfer.import_jsonl(
            self._core, source, on_conflict=on_conflict, progress=progress
        )

    async def copy_to(
        self,
        other: SessionStore,
        *,
        on_conflict: OnConflict,
        progress: Progress | None = None,
        **filters: Unpack[FilterArgs],
    ) -> ImportResult:
        """Copy sessions (items in order, timestamps, metadata) into ``other``.

        The same stream as an export followed by an import, with no file in
        between; ``on_conflict`` is that of :meth:`import_jsonl`, the filters
        those of :meth:`list_sessions`.
        """
        return await transfer.copy_sessions(
            self._core, other._core, filters, on_conflict=on_conflict, progress=progress
        )
