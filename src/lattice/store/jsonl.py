"""The JSON Lines export format, version 2, as pure code: lines out, checked records in.

The file format, version 2, one JSON object per line, UTF-8::

    {"format": "lattice-sessions", "version": 1, "exported_at": "<ISO 8601>"}
    {"type": "session", "session_id": "...", "created_at": "...", "updated_at": "...",
     "item_count": 2, "metadata": {...}}
    {"type": "item", "created_at": "...", "json": "<the item's stored JSON text>"}
    {"type": "item", ...}
    {"type": "branches", ...}    (advanced sessions only: see lattice.store.branches)
    {"type": "session", ...}
    ...
    {"type": "end", "sessions": 1, "items": 2}

Items follow their session line, oldest first. An item is kept as its stored
JSON *text*, inside a JSON string, so that an import stores the very same
text (key order, ``1.0``, escapes) whoever wrote it. The ``end`` line makes a
truncated file detectable. ``item_count`` on a session line is informative;
an import counts the items it reads. Version 2 added the ``branches``
record; files of version 1 (which have none) import as before.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..dialects import check_packet
from ..items import check_session_id, check_stored_text
from ..schema import utc_now
from .branches import RECORD_TYPE, Branches, check_record
from .model import SessionInfo, decode_metadata, encode_metadata

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FormatError",
    "Item",
    "Parser",
    "Record",
    "branches_line",
    "check_file",
    "end_line",
    "finish_file",
    "header_line",
    "item_line",
    "open_file",
    "read_lines",
    "session_line",
    "write_lines",
]

FORMAT_NAME = "lattice-sessions"
FORMAT_VERSION = 2
#: The versions an import reads.
READABLE_VERSIONS = (1, 2)
_READ_LINES = 256

#: An item as the format carries it: its creation time and stored JSON text.
Item = tuple[dt.datetime, str]
#: What reading a database or a file yields: a session, a chunk of its items, its branches.
Record = SessionInfo | list[Item] | Branches


def _stamp(value: dt.datetime) -> str:
    return value.isoformat()


def end_line(sessions: int, items: int) -> str:
    """The last line, whose counts make a truncated file detectable."""
    return json.dumps({"type": "end", "sessions": sessions, "items": items}) + "\n"


def header_line() -> str:
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "exported_at": _stamp(utc_now())}
    return json.dumps(header) + "\n"


def session_line(info: SessionInfo) -> str:
    record = {"type": "session", **info.to_dict(), "metadata": info.metadata or None}
    return json.dumps(record, ensure_ascii=False) + "\n"


def item_line(item: Item) -> str:
    created_at, text = item
    return (
        f'{{"type":"item","created_at":"{_stamp(created_at)}","json":'
        f"{json.dumps(text, ensure_ascii=False)}}}\n"
    )


def branches_line(branches: Branches) -> str:
    """An advanced session's branches, segments, structure and usage (after its items)."""
    return json.dumps(branches.line_record(), ensure_ascii=False) + "\n"


class FormatError(ValueError):
    """A line of an import file is not what the format allows."""


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
    try:
        utc = when.astimezone(dt.timezone.utc)
    except OverflowError:
        utc = None
    # Stored as UTC; years 1000 to 9999 are what every database takes
    # (MySQL's DATETIME range).
    if utc is None or not 1000 <= utc.year <= 9999:
        raise FormatError(f"{key!r} {value!r} is outside the years 1000 to 9999 (in UTC)")
    return utc


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"{what} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what} is not a JSON object")
    return value


@dataclass
class Parser:
    """Reads the lines of an export one by one, checking each against the format."""

    max_item_bytes: int
    #: MySQL's max_allowed_packet, when the target has one.
    max_packet: int | None = None
    lineno: int = 0
    sessions: int = 0
    items: int = 0
    ended: bool = False
    in_session: bool = False
    session_items: int = 0
    seen: set[str] = field(default_factory=set)

    def feed(self, line: str) -> SessionInfo | Item | Branches | None:
        self.lineno += 1
        try:
            return self._parse(line)
        except FormatError as exc:
            raise ValueError(f"line {self.lineno}: {exc}") from None

    def _parse(self, line: str) -> SessionInfo | Item | Branches | None:
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
        if kind == RECORD_TYPE:
            return self._branches(record)
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
        if version not in READABLE_VERSIONS:
            raise FormatError(
                f"format version {version!r}; this Lattice reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
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
        self.session_items = 0
        return SessionInfo(
            session_id=session_id,
            created_at=_timestamp(record, "created_at"),
            updated_at=_timestamp(record, "updated_at"),
            item_count=0,
            metadata=decode_metadata(text),
        )

    def _item(self, record: dict[str, Any]) -> Item:
        if not self.in_session:
            raise FormatError("an item before any session line")
        text = record.get("json")
        if not isinstance(text, str):
            raise FormatError("an item needs its JSON text in 'json'")
        # The rules add_items applies (size, nesting, a JSON object), and the
        # database's own limit: what the import would be refused midway.
        try:
            check_stored_text(text, self.max_item_bytes)
            if self.max_packet is not None:
                check_packet([text], self.max_packet)
        except ValueError as exc:
            raise FormatError(str(exc).replace("item 0 ", "the item ")) from None
        self.items += 1
        self.session_items += 1
        return _timestamp(record, "created_at"), text

    def _branches(self, record: dict[str, Any]) -> Branches:
        if not self.in_session:
            raise FormatError("a branches record before any session line")
        self.in_session = False  # one per session, after its items
        try:
            return check_record(record, self.session_items, _timestamp)
        except ValueError as exc:
            raise FormatError(str(exc)) from None

    def finish(self) -> None:
        if self.lineno == 0:
            raise ValueError("the file is empty, not a Lattice export")
        if not self.ended:
            raise ValueError(f"the file ends at line {self.lineno} without its end line: truncated")


def check_file(
    handle: IO[str], max_item_bytes: int, max_packet: int | None = None
) -> tuple[int, int]:
    """Parse the whole file (in a worker thread); return ``(sessions, items)``."""
    parser = Parser(max_item_bytes, max_packet)
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


def read_lines(handle: IO[str]) -> list[str]:
    lines: list[str] = []
    for line in handle:
        lines.append(line)
        if len(lines) >= _READ_LINES:
            break
    return lines


def open_file(path: str | Path, mode: str) -> IO[str]:
    """An export file, opened as UTF-8 with ``\n`` line ends."""
    return open(path, mode, encoding="utf-8", newline="\n" if "w" in mode else None)


def write_lines(handle: IO[str], lines: list[str]) -> None:
    handle.write("".join(lines))


def finish_file(partial: Path, final: Path, ok: bool) -> None:
    """Move a finished export into place, or remove a failed one."""
    if ok:
        os.replace(partial, final)
    else:
        partial.unlink(missing_ok=True)
