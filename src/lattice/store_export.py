"""Export, import and copy of sessions as a stream of records (JSON Lines on disk).

The file format, version 1, one JSON object per line, UTF-8::

    {"format": "lattice-sessions", "version": 1, "exported_at": "<ISO 8601>"}
    {"type": "session", "session_id": "...", "created_at": "...", "updated_at": "...",
     "item_count": 2, "metadata": {...}}
    {"type": "item", "created_at": "...", "json": "<the item's stored JSON text>"}
    {"type": "item", ...}
    {"type": "session", ...}
    ...
    {"type": "end", "sessions": 1, "items": 2}

Items follow their session line, oldest first. An item is kept as its stored
JSON *text*, inside a JSON string, so that an import stores the very same
text (key order, ``1.0``, escapes) whoever wrote it. The ``end`` line makes a
truncated file detectable. ``item_count`` on a session line is informative;
an import counts the items it reads.

Memory stays bounded: the source reads sessions by keyset a chunk at a time
and each session's items through a server-side cursor (``yield_per``), and
the target writes them in batches of at most ``_BATCH_ITEMS`` items or
``_BATCH_BYTES`` bytes, one transaction per batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import StaticPool

from .schema import utc_now
from .sqlalchemy_session import check_session_id
from .store_query import (
    ExportResult,
    FilterArgs,
    Filters,
    ImportResult,
    SessionInfo,
    decode_metadata,
    encode_metadata,
)

if TYPE_CHECKING:
    from .store import Progress, SessionStore

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "copy_sessions", "export_jsonl", "import_jsonl"]

FORMAT_NAME = "lattice-sessions"
FORMAT_VERSION = 1
CONFLICT_POLICIES = ("skip", "replace", "append")

# Sessions read per keyset query, and items per fetch from the server-side
# cursor. With 2 KiB items an export holds well under 1 MB of rows at a time.
_SESSION_CHUNK = 500
_ITEM_CHUNK = 200
# An import transaction writes at most this many items or bytes (which stays
# far below MySQL's max_allowed_packet, 16 MiB by default on MariaDB).
_BATCH_ITEMS = 1000
_BATCH_BYTES = 4 * 1024 * 1024
# Lines written per file write.
_WRITE_BYTES = 1024 * 1024
_READ_LINES = 256

_Item = tuple[dt.datetime, str]


@dataclass
class _Session:
    info: SessionInfo
    items: list[_Item] = field(default_factory=list)


# -- reading the database ------------------------------------------------------


async def _db_records(
    store: SessionStore, filters: Filters
) -> AsyncIterator[SessionInfo | list[_Item]]:
    """Yield each matching session's info, then its items in chunks, by session id.

    On PostgreSQL and MySQL everything is read in one REPEATABLE READ
    transaction, so the export is one consistent snapshot. SQLite (whose
    driver cannot hold a read snapshot across statements here) reads each
    chunk at the latest commit.
    """
    state = await store._bind()
    s, m = store.tables.sessions, store.tables.messages
    conditions = filters.where(store.tables, store.engine.dialect)
    async with state.exclusive(), store.engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            last: str | None = None
            while True:
                query = store._info_columns().where(*conditions)
                if last is not None:
                    query = query.where(s.c.session_id > last)
                query = query.order_by(s.c.session_id).limit(_SESSION_CHUNK)
                rows = (await conn.execute(query)).all()
                for row in rows:
                    info = SessionInfo.from_row(row)
                    if not filters.matches_metadata(info.metadata):
                        continue
                    yield info
                    items = (
                        select(m.c.created_at, m.c.message_data)
                        .where(m.c.session_id == info.session_id)
                        .order_by(m.c.id)
                        .execution_options(yield_per=_ITEM_CHUNK)
                    )
                    stream = await conn.stream(items)
                    async for part in stream.partitions():
                        yield [(r[0], r[1]) for r in part]
                if len(rows) < _SESSION_CHUNK:
                    return
                last = rows[-1][0]


# -- the file format -------------------------------------------------------------


def _stamp(value: dt.datetime) -> str:
    return value.isoformat()


def _header_line() -> str:
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "exported_at": _stamp(utc_now())}
    return json.dumps(header) + "\n"


def _session_line(info: SessionInfo) -> str:
    record = {"type": "session", **info.to_dict(), "metadata": info.metadata or None}
    return json.dumps(record, ensure_ascii=False) + "\n"


def _item_line(item: _Item) -> str:
    created_at, text = item
    return (
        f'{{"type":"item","created_at":"{_stamp(created_at)}","json":'
        f"{json.dumps(text, ensure_ascii=False)}}}\n"
    )


class FormatError(ValueError):
    """A line of an import file is not what format version 1 allows."""


_FRACTION = re.compile(r"\.(\d{1,6})(?=[+-]|$)")


def _fromisoformat(value: str) -> dt.datetime:
    """``datetime.fromisoformat`` with Python 3.11's leniency on 3.10 too.

    Python 3.10 only takes 3 or 6 fractional digits and no ``Z``; normalise both.
    """
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    value = _FRACTION.sub(lambda m: "." + m.group(1).ljust(6, "0"), value, count=1)
    return dt.datetime.fromisoformat(value)


def _timestamp(record: dict[str, Any], key: str) -> dt.datetime:
    value = record.get(key)
    try:
        when = _fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise FormatError(f"{key!r} must be an ISO 8601 timestamp with a UTC offset")
    return when


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"{what} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what} is not a JSON object")
    return value


@dataclass
class _Parser:
    """Reads the lines of an export one by one, checking each against the format."""

    max_item_bytes: int
    lineno: int = 0
    sessions: int = 0
    items: int = 0
    ended: bool = False
    in_session: bool = False
    seen: set[str] = field(default_factory=set)

    def feed(self, line: str) -> SessionInfo | _Item | None:
        self.lineno += 1
        try:
            return self._parse(line)
        except FormatError as exc:
            raise ValueError(f"line {self.lineno}: {exc}") from None

    def _parse(self, line: str) -> SessionInfo | _Item | None:
        if not line.strip():
            return None
        if self.ended:
            raise FormatError("data after the end line")
        record = _json_object(line, "the line")
        if self.lineno == 1:
            self._header(record)
            return None
        kind = record.get("type")
        if kind == "item":
            return self._item(record)
        if kind == "session":
            return self._session(record)
        if kind == "end":
            if (record.get("sessions"), record.get("items")) != (self.sessions, self.items):
                raise FormatError(
                    f"the end line counts {record.get('sessions')} sessions and "
                    f"{record.get('items')} items, but the file holds {self.sessions} and "
                    f"{self.items}"
                )
            self.ended = True
            return None
        raise FormatError(f"unknown record type {kind!r}")

    def _header(self, record: dict[str, Any]) -> None:
        if record.get("format") != FORMAT_NAME:
            raise FormatError(f"not a Lattice export (no {FORMAT_NAME!r} header)")
        version = record.get("version")
        if version != FORMAT_VERSION:
            raise FormatError(
                f"format version {version!r}; this Lattice reads version {FORMAT_VERSION}"
            )

    def _session(self, record: dict[str, Any]) -> SessionInfo:
        try:
            session_id = check_session_id(record.get("session_id"))
        except (TypeError, ValueError) as exc:
            raise FormatError(f"bad session_id: {exc}") from None
        if session_id in self.seen:
            raise FormatError(f"session {session_id!r} appears twice")
        self.seen.add(session_id)
        metadata = record.get("metadata") or {}
        try:
            text, _owner = encode_metadata(metadata)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"bad metadata of session {session_id!r}: {exc}") from None
        self.sessions += 1
        self.in_session = True
        return SessionInfo(
            session_id=session_id,
            created_at=_timestamp(record, "created_at"),
            updated_at=_timestamp(record, "updated_at"),
            item_count=0,
            metadata=decode_metadata(text),
        )

    def _item(self, record: dict[str, Any]) -> _Item:
        if not self.in_session:
            raise FormatError("an item before any session line")
        text = record.get("json")
        if not isinstance(text, str):
            raise FormatError("an item needs its JSON text in 'json'")
        _json_object(text, "the item's JSON text")
        try:
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise FormatError("the item's JSON text is not valid Unicode") from None
        if size > self.max_item_bytes:
            raise FormatError(f"an item of {size} bytes, over max_item_bytes")
        self.items += 1
        return _timestamp(record, "created_at"), text

    def finish(self) -> None:
        if self.lineno == 0:
            raise ValueError("the file is empty, not a Lattice export")
        if not self.ended:
            raise ValueError(f"the file ends at line {self.lineno} without its end line: truncated")


def _check_file(handle: IO[str], max_item_bytes: int) -> tuple[int, int]:
    """Parse the whole file (in a worker thread); return ``(sessions, items)``."""
    parser = _Parser(max_item_bytes)
    try:
        for line in handle:
            parser.feed(line)
    except UnicodeDecodeError:  # a gzip file, say: name the problem, not the codec
        raise FormatError(
            f"not a Lattice export: line {parser.lineno + 1} is not UTF-8 text "
            "(a compressed file? decompress it first)"
        ) from None
    parser.finish()
    return parser.sessions, parser.items


def _read_lines(handle: IO[str]) -> list[str]:
    lines: list[str] = []
    for line in handle:
        lines.append(line)
        if len(lines) >= _READ_LINES:
            break
    return lines


async def _file_records(
    handle: IO[str], max_item_bytes: int
) -> AsyncIterator[SessionInfo | list[_Item]]:
    parser = _Parser(max_item_bytes)
    while lines := await asyncio.to_thread(_read_lines, handle):
        items: list[_Item] = []
        for line in lines:
            record = parser.feed(line)
            if isinstance(record, SessionInfo):
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
    """Writes a stream of records into a store, batch by batch."""

    def __init__(self, store: SessionStore, on_conflict: str, progress: Progress | None) -> None:
        self.store = store
        self.on_conflict = on_conflict
        self.progress = progress
        self.result = ImportResult()
        self.session_id: str | None = None
        self.batch: list[_Item] = []
        self.batch_bytes = 0

    async def run(self, records: AsyncIterator[SessionInfo | list[_Item]]) -> ImportResult:
        async for record in records:
            if isinstance(record, SessionInfo):
                await self.flush()
                self.session_id = await self.begin(record)
                continue
            if self.session_id is None:  # a skipped session
                if self.progress is not None:
                    self.progress(len(record))
                continue
            for item in record:
                self.batch.append(item)
                self.batch_bytes += len(item[1])
                if len(self.batch) >= _BATCH_ITEMS or self.batch_bytes >= _BATCH_BYTES:
                    await self.flush()
        await self.flush()
        return self.result

    async def begin(self, info: SessionInfo) -> str | None:
        """Make (or pick up) the session's row; ``None`` when it is skipped."""
        store = self.store
        s = store.tables.sessions
        this = s.c.session_id == info.session_id
        text, owner = encode_metadata(info.metadata)

        async def body(conn: AsyncConnection) -> str:
            if await store._lock(conn, [info.session_id]):
                if self.on_conflict != "append":
                    return self.on_conflict
                row = (
                    await conn.execute(select(s.c.session_metadata, s.c.updated_at).where(this))
                ).one()
                merged = {**decode_metadata(row[0]), **info.metadata}
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
            await conn.execute(
                insert(s).values(
                    session_id=info.session_id,
                    created_at=info.created_at,
                    updated_at=info.updated_at,
                    item_count=0,
                    write_tokens="",
                    session_metadata=text,
                    owner=owner,
                )
            )
            return "created"

        outcome = await store._transact(body)
        if outcome == "replace":
            await store.delete_session(info.session_id)
            if await store._transact(body) != "created":
                raise RuntimeError(f"session {info.session_id!r} came back while being replaced")
            outcome = "replaced"
        if outcome == "skip":
            self.result.skipped += 1
            return None
        setattr(self.result, outcome, getattr(self.result, outcome) + 1)
        return info.session_id

    async def flush(self) -> None:
        if not self.batch or self.session_id is None:
            return
        store, batch, session_id = self.store, self.batch, self.session_id
        s, m = store.tables.sessions, store.tables.messages

        async def body(conn: AsyncConnection) -> None:
            await store._lock(conn, [session_id])
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

        await store._transact(body)
        self.result.items += len(batch)
        if self.progress is not None:
            self.progress(len(batch))
        self.batch, self.batch_bytes = [], 0


def _check_policy(on_conflict: str) -> None:
    if on_conflict not in CONFLICT_POLICIES:
        raise ValueError(
            f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}, not {on_conflict!r}"
        )


# -- the public operations ---------------------------------------------------------


def _open(path: str | Path, mode: str) -> IO[str]:
    return open(path, mode, encoding="utf-8", newline="\n" if "w" in mode else None)


def _write(handle: IO[str], lines: list[str]) -> None:
    handle.write("".join(lines))


def _finish_file(partial: Path, final: Path, ok: bool) -> None:
    if ok:
        os.replace(partial, final)
    else:
        partial.unlink(missing_ok=True)


async def export_jsonl(
    store: SessionStore,
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
        handle = await asyncio.to_thread(_open, partial, "w")
        ok = False
        try:
            result = await _export(store, handle, filters, progress)
            ok = True
            return result
        finally:
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(_finish_file, partial, final, ok)
    return await _export(store, destination, filters, progress)


async def _export(
    store: SessionStore, handle: IO[str], filters: Filters, progress: Progress | None
) -> ExportResult:
    result = ExportResult()
    lines = [_header_line()]
    size = 0
    async for record in _db_records(store, filters):
        if isinstance(record, SessionInfo):
            lines.append(_session_line(record))
            result.sessions += 1
            continue
        for item in record:
            line = _item_line(item)
            lines.append(line)
            size += len(line)
        result.items += len(record)
        if progress is not None:
            progress(len(record))
        if size >= _WRITE_BYTES:
            await asyncio.to_thread(_write, handle, lines)
            lines, size = [], 0
    lines.append(json.dumps({"type": "end", "sessions": result.sessions, "items": result.items}))
    lines.append("\n")
    await asyncio.to_thread(_write, handle, lines)
    await asyncio.to_thread(handle.flush)
    return result


async def import_jsonl(
    store: SessionStore,
    source: str | Path | IO[str],
    *,
    on_conflict: str,
    progress: Progress | None,
) -> ImportResult:
    """See :meth:`lattice.SessionStore.import_jsonl`."""
    _check_policy(on_conflict)
    if isinstance(source, (str, Path)):
        handle = await asyncio.to_thread(_open, source, "r")
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
    store: SessionStore, handle: IO[str], on_conflict: str, progress: Progress | None
) -> ImportResult:
    start = handle.tell()
    await asyncio.to_thread(_check_file, handle, store._max_item_bytes)
    handle.seek(start)
    writer = _Writer(store, on_conflict, progress)
    return await writer.run(_file_records(handle, store._max_item_bytes))


async def copy_sessions(
    source: SessionStore,
    target: SessionStore,
    filter_args: FilterArgs,
    *,
    on_conflict: str,
    progress: Progress | None,
) -> ImportResult:
    """See :meth:`lattice.SessionStore.copy_to`."""
    _check_policy(on_conflict)
    if source.engine is target.engine and (
        source.tables is target.tables or isinstance(source.engine.sync_engine.pool, StaticPool)
    ):
        raise ValueError("copy_to needs another store: a different database or other tables")
    filters = Filters.make(**filter_args)
    return await _Writer(target, on_conflict, progress).run(_db_records(source, filters))
