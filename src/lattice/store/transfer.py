"""Export, import and copy of sessions as a stream of records, over the store's core.

Memory stays bounded: the source reads sessions by keyset a chunk at a time
and each session's items by keyset, a chunk at a time, and
the target writes them in batches of at most ``_BATCH_ITEMS`` items or
``_BATCH_BYTES`` bytes, one transaction per batch. The file format is
:mod:`lattice.store.jsonl`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import engines, writes
from ..dialects import rules
from . import jsonl
from .branches import Branches, read_branches, write_branches
from .core import StoreCore, shielded_rows
from .jsonl import Item, Record
from .listing import FilterArgs, Filters
from .model import (
    ExportResult,
    ImportResult,
    SessionInfo,
    decode_metadata,
    encode_metadata,
    merge_patch,
)

__all__ = ["CONFLICT_POLICIES", "copy_sessions", "export_jsonl", "import_jsonl"]

CONFLICT_POLICIES = ("skip", "replace", "append")

# Sessions read per keyset query, and items per keyset query within a session
# (the items of one session). With 2 KiB items an export holds well under 1 MB at a time.
_SESSION_CHUNK = 500
_ITEM_CHUNK = 200
# An import transaction writes at most this many items or bytes (which stays
# far below MySQL's max_allowed_packet, 16 MiB by default on MariaDB).
_BATCH_ITEMS = 1000
_BATCH_BYTES = 4 * 1024 * 1024
# Lines written per file write.
_WRITE_BYTES = 1024 * 1024

Progress = Callable[[int], None]


@dataclass
class _Session:
    info: SessionInfo
    items: list[Item] = field(default_factory=list)


# -- reading the database ------------------------------------------------------


async def _db_records(
    store: StoreCore, filters: Filters
) -> AsyncIterator[Record]:
    """Yield each matching session's info, then its items in chunks, by session id.

    On PostgreSQL and MySQL everything is read in one REPEATABLE READ
    transaction, so the export is one consistent snapshot. SQLite (whose
    driver cannot hold a read snapshot across statements here) reads each
    chunk at the latest commit.
    """
    engine, state = await store.bind_read()  # the replica, if the store has one
    s, m = store.tables.sessions, store.tables.messages
    conditions = filters.where(store.tables, engine.dialect)
    async with state.exclusive(), engine.connect() as conn:
        isolation = rules(conn.dialect).export_isolation
        if isolation is not None:
            await conn.execution_options(isolation_level=isolation)
        async with conn.begin():
            last: str | None = None
            while True:
                query = store.info_columns().where(*conditions)
                if last is not None:
                    query = query.where(s.c.session_id > last)
                query = query.order_by(s.c.session_id).limit(_SESSION_CHUNK)
                rows = await shielded_rows(conn, query)
                for row in rows:
                    info = SessionInfo.from_row(row)
                    if not filters.matches_metadata(info.metadata):
                        continue
                    yield info
                    # Keyset chunks rather than a server-side cursor: bounded
                    # memory on every driver (asyncmy's streaming cursor
                    # buffered most of a 16 MB session), one snapshot all the same.
                    after = 0
                    while True:
                        chunk = await shielded_rows(
                            conn,
                            select(m.c.id, m.c.created_at, m.c.message_data)
                            .where(m.c.session_id == info.session_id, m.c.id > after)
                            .order_by(m.c.id)
                            .limit(_ITEM_CHUNK),
                        )
                        if chunk:
                            yield [(r[1], r[2]) for r in chunk]
                            after = chunk[-1][0]
                        if len(chunk) < _ITEM_CHUNK:
                            break
                    found = await read_branches(conn, store.tables, info.session_id)
                    if found is not None:
                        yield found
                if len(rows) < _SESSION_CHUNK:
                    return
                last = rows[-1][0]


async def _file_records(
    handle: IO[str], max_item_bytes: int, max_packet: int | None
) -> AsyncIterator[Record]:
    parser = jsonl.Parser(max_item_bytes, max_packet)
    while lines := await asyncio.to_thread(jsonl.read_lines, handle):
        items: list[Item] = []
        for line in lines:
            record = parser.feed(line)
            if isinstance(record, (SessionInfo, Branches)):
                if items:
                    yield items
                    items = []
                yield record
            elif record is not None:
                items.append(record)
        if items:
            yield items


# -- writing the database -----------------------------------------------------------


class _Writer:
    """Writes a stream of records into a store, each session in one transaction.

    A session is imported whole or not at all: its row, its metadata and all
    its items commit together (batches of ``_BATCH_ITEMS`` statements inside
    that one transaction), so an import killed halfway leaves the sessions
    before it complete and none half-written, and running it again with
    ``on_conflict="skip"`` finishes the job. ``replace`` swaps the old
    session for the new one in the same transaction.
    """

    def __init__(self, store: StoreCore, on_conflict: str, progress: Progress | None) -> None:
        self.store = store
        self.on_conflict = on_conflict
        self.progress = progress
        self.result = ImportResult()
        self.session_id: str | None = None
        self.conn: AsyncConnection | None = None
        self._stack: AsyncExitStack | None = None
        self._outcome = ""
        self._items = 0
        self.batch: list[Item] = []
        self.batch_bytes = 0

    async def run(self, records: AsyncIterator[Record]) -> ImportResult:
        try:
            async for record in records:
                if isinstance(record, SessionInfo):
                    await self.end_session()
                    await self.start_session(record)
                    continue
                if isinstance(record, Branches):
                    await self.write_branches(record)
                    continue
                if self.conn is None:  # a skipped session
                    if self.progress is not None:
                        self.progress(len(record))
                    continue
                for item in record:
                    self.batch.append(item)
                    self.batch_bytes += len(item[1])
                    if len(self.batch) >= _BATCH_ITEMS or self.batch_bytes >= _BATCH_BYTES:
                        await self.flush()
            await self.end_session()
        except BaseException as exc:
            await self.abort(exc)
            raise
        return self.result

    async def start_session(self, info: SessionInfo) -> None:
        """Open the session's transaction and make (or pick up) its row."""
        store = self.store
        state = await store.bind()

        async def attempt() -> str:
            stack = AsyncExitStack()
            await stack.enter_async_context(state.exclusive())
            conn = await stack.enter_async_context(engines.transaction(store.engine))
            try:
                outcome = await self.begin(conn, info)
            except BaseException as exc:
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            if outcome == "skip":
                await stack.aclose()
            else:
                self._stack, self.conn = stack, conn
            return outcome

        self._outcome = await writes.retry_conflicts(attempt)
        if self._outcome == "skip":
            self.result.skipped += 1
            self.session_id = None
        else:
            self.session_id = info.session_id
            self._items = 0

    async def end_session(self) -> None:
        """Write what is left of the session and commit it."""
        if self._stack is None:
            return
        await self.flush()
        stack, self._stack, self.conn = self._stack, None, None
        await stack.aclose()
        setattr(self.result, self._outcome, getattr(self.result, self._outcome) + 1)
        self.result.items += self._items
        self.session_id = None

    async def write_branches(self, record: Branches) -> None:
        """An advanced session's branches, over the items written (not into an appended one)."""
        await self.flush()
        if self.conn is not None and self.session_id and self._outcome != "appended":
            await write_branches(self.conn, self.store.tables, self.session_id, record)

    async def abort(self, exc: BaseException) -> None:
        """Roll back the session being written."""
        stack, self._stack, self.conn = self._stack, None, None
        if stack is not None:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)

    async def begin(self, conn: AsyncConnection, info: SessionInfo) -> str:
        """The session's row, by the conflict policy: its outcome's name."""
        store = self.store
        s = store.tables.sessions
        this = s.c.session_id == info.session_id
        text, owner = encode_metadata(info.metadata)
        if await store.lock(conn, [info.session_id]):
            if self.on_conflict == "skip":
                return "skip"
            if self.on_conflict == "append":
                row = (
                    await conn.execute(select(s.c.session_metadata, s.c.updated_at).where(this))
                ).one()
                # The one metadata merge of the store (RFC 7396), as set_metadata does.
                merged = merge_patch(decode_metadata(row[0]), info.metadata)
                merged_text, merged_owner = encode_metadata(merged)
                await conn.execute(
                    update(s)
                    .where(this)
                    .values(
                        session_metadata=merged_text,
                        owner=merged_owner,
                        updated_at=max(row[1], info.updated_at),
                    )
                )
                return "appended"
            # replace: the old session goes in this very transaction.
            m = store.tables.messages
            await conn.execute(delete(m).where(m.c.session_id == info.session_id))
            await conn.execute(delete(s).where(this))
            await store.journal_deletes(conn, [info.session_id])
            outcome = "replaced"
        else:
            outcome = "created"
        await store.lock_or_create(conn, info.session_id)
        await conn.execute(
            update(s)
            .where(this)
            .values(
                created_at=info.created_at,
                updated_at=info.updated_at,
                session_metadata=text,
                owner=owner,
            )
        )
        return outcome

    async def flush(self) -> None:
        """Write the batch in hand into the open session's transaction."""
        if not self.batch or self.conn is None:
            return
        await self.write_batch(self.conn, self.batch)
        self._items += len(self.batch)
        if self.progress is not None:
            self.progress(len(self.batch))
        self.batch, self.batch_bytes = [], 0

    async def write_batch(self, conn: AsyncConnection, batch: list[Item]) -> None:
        """Insert ``batch`` after the session's items, and count it."""
        s, m = self.store.tables.sessions, self.store.tables.messages
        session_id = self.session_id
        await conn.execute(
            insert(m),
            [
                {"session_id": session_id, "message_data": text, "created_at": created_at}
                for created_at, text in batch
            ],
        )
        await conn.execute(
            update(s)
            .where(s.c.session_id == session_id)
            .values(item_count=s.c.item_count + len(batch))
        )

    async def copy_in_database(self, info: SessionInfo, source: StoreCore) -> None:
        """Copy one session from other tables of the same database, in SQL.

        One connection does it all (``INSERT ... SELECT`` in the session's
        transaction), so a copy between two stores on one engine works even
        with a pool of one connection.
        """
        await self.start_session(info)
        if self.conn is None:
            return
        s, m = self.store.tables.sessions, self.store.tables.messages
        src = source.tables.messages
        rows = (
            select(src.c.session_id, src.c.message_data, src.c.created_at)
            .where(src.c.session_id == info.session_id)
            .order_by(src.c.id)
        )
        # preserve_rowcount: psycopg reports -1 for INSERT ... SELECT otherwise.
        copied = await self.conn.execute(
            insert(m)
            .from_select(["session_id", "message_data", "created_at"], rows)
            .execution_options(preserve_rowcount=True)
        )
        await self.conn.execute(
            update(s)
            .where(s.c.session_id == info.session_id)
            .values(item_count=s.c.item_count + copied.rowcount)
        )
        self._items += int(copied.rowcount)
        if self.progress is not None:
            self.progress(int(copied.rowcount))
        await self.end_session()


def _check_policy(on_conflict: str) -> None:
    if on_conflict not in CONFLICT_POLICIES:
        raise ValueError(
            f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}, not {on_conflict!r}"
        )


# -- the public operations ---------------------------------------------------------


async def export_jsonl(
    store: StoreCore,
    destination: str | Path | IO[str],
    filter_args: FilterArgs,
    *,
    progress: Progress | None,
) -> ExportResult:
    """See :meth:`lattice.SessionStore.export_jsonl`.

    A path is written as ``<path>.partial`` and renamed when complete, so a
    failed export never leaves a file that looks whole.
    """
    filters = Filters.make(**filter_args)
    if isinstance(destination, (str, Path)):
        final = Path(destination)
        partial = final.with_name(final.name + ".partial")
        # Opened here, not in a thread: a cancellation while a thread opened
        # it would leave a .partial file that nothing removes.
        handle = jsonl.open_file(partial, "w")
        ok = False
        try:
            result = await _export(store, handle, filters, progress)
            ok = True
            return result
        finally:
            # Not awaited: an interrupted export (Ctrl-C, SIGTERM) is a
            # cancellation, which would cancel an await here too and leave
            # the .partial file behind. Closing and renaming are quick.
            handle.close()
            jsonl.finish_file(partial, final, ok)
    return await _export(store, destination, filters, progress)


async def _export(
    store: StoreCore, handle: IO[str], filters: Filters, progress: Progress | None
) -> ExportResult:
    result = ExportResult()
    lines = [jsonl.header_line()]
    size = 0
    async for record in _db_records(store, filters):
        if isinstance(record, SessionInfo):
            lines.append(jsonl.session_line(record))
            result.sessions += 1
            continue
        if isinstance(record, Branches):
            lines.append(jsonl.branches_line(record))
            continue
        for item in record:
            line = jsonl.item_line(item)
            lines.append(line)
            size += len(line)
        result.items += len(record)
        if progress is not None:
            progress(len(record))
        if size >= _WRITE_BYTES:
            await asyncio.to_thread(jsonl.write_lines, handle, lines)
            lines, size = [], 0
    lines.append(jsonl.end_line(result.sessions, result.items))
    await asyncio.to_thread(jsonl.write_lines, handle, lines)
    await asyncio.to_thread(handle.flush)
    return result


async def import_jsonl(
    store: StoreCore,
    source: str | Path | IO[str],
    *,
    on_conflict: str,
    progress: Progress | None,
) -> ImportResult:
    """See :meth:`lattice.SessionStore.import_jsonl`."""
    _check_policy(on_conflict)
    if isinstance(source, (str, Path)):
        handle = await asyncio.to_thread(jsonl.open_file, source, "r")
        try:
            return await _import(store, handle, on_conflict, progress)
        finally:
            await asyncio.to_thread(handle.close)
    if not await asyncio.to_thread(source.seekable):
        raise TypeError(
            "import_jsonl reads its source twice (once to check it); pass a path or a seekable file"
        )
    return await _import(store, source, on_conflict, progress)


async def _import(
    store: StoreCore, handle: IO[str], on_conflict: str, progress: Progress | None
) -> ImportResult:
    start = handle.tell()
    # The whole file is checked first, against this database's limits too
    # (MySQL's max_allowed_packet), so it is not refused halfway.
    max_packet = await store.max_packet()
    await asyncio.to_thread(jsonl.check_file, handle, store.max_item_bytes, max_packet)
    handle.seek(start)
    writer = _Writer(store, on_conflict, progress)
    return await writer.run(_file_records(handle, store.max_item_bytes, max_packet))


async def copy_sessions(
    source: StoreCore,
    target: StoreCore,
    filter_args: FilterArgs,
    *,
    on_conflict: str,
    progress: Progress | None,
) -> ImportResult:
    """See :meth:`lattice.SessionStore.copy_to`."""
    _check_policy(on_conflict)
    if source.engine is target.engine and source.tables is target.tables:
        raise ValueError("copy_to needs another store: a different database or other tables")
    filters = Filters.make(**filter_args)
    writer = _Writer(target, on_conflict, progress)
    if source.engine is not target.engine:
        return await writer.run(_db_records(source, filters))
    # One engine: the copy runs in SQL, session by session, on one connection.
    async for info in _catalogue(source, filters):
        await writer.copy_in_database(info, source)
    return writer.result


async def _catalogue(store: StoreCore, filters: Filters) -> AsyncIterator[SessionInfo]:
    """The matching sessions by id, read a chunk at a time without holding a connection."""
    s = store.tables.sessions
    conditions = filters.where(store.tables, store.engine.dialect)
    last: str | None = None
    while True:
        query = store.info_columns().where(*conditions)
        if last is not None:
            query = query.where(s.c.session_id > last)
        rows = await store.read(query.order_by(s.c.session_id).limit(_SESSION_CHUNK))
        for row in rows:
            info = SessionInfo.from_row(row)
            if filters.matches_metadata(info.metadata):
                yield info
        if len(rows) < _SESSION_CHUNK:
            return
        last = rows[-1][0]
