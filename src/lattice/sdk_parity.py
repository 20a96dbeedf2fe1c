"""Small pieces the SQL sessions need to behave like the Agents SDK's (issue 13).

Kept apart from :mod:`lattice.sqlalchemy_session` so that module only gains
a few calls: the closed state (``close()``), the SDK's ``ensure_ascii``
storage format, and reading past rows that are not JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .items import loads

__all__ = [
    "ascii_texts",
    "check_sqlite_table_names",
    "count_unreadable",
    "decode_rows",
    "logger",
]

logger = logging.getLogger("lattice")

# Set by count_unreadable(): how many rows the last decode_rows call left out.
_UNREADABLE: ContextVar[list[int] | None] = ContextVar("lattice_unreadable", default=None)


@contextmanager
def count_unreadable() -> Iterator[list[int]]:
    """Within the block, ``box[0]`` is how many rows the latest read left out as not JSON.

    For ``lattice sessions show``, which reports them. (A read with a limit
    may decode a widening window several times; the last one counts.)
    """
    box = [0]
    token = _UNREADABLE.set(box)
    try:
        yield box
    finally:
        _UNREADABLE.reset(token)


_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def ascii_texts(items: Iterable[Any]) -> list[str]:
    """The items as JSON with ``\\uXXXX`` escapes, the SDK's default format.

    Only called after :func:`lattice.items.encode_items` accepted the batch,
    so the items are known to be valid JSON values.
    """
    return [_ASCII_ENCODER.encode(item) for item in items]


def decode_rows(
    texts: Sequence[str], session_id: str, done: str = "skipped"
) -> list[dict[str, Any]]:
    """Decode stored item texts, leaving out (and logging) any that are not JSON objects.

    Lattice never writes such a row, but another program sharing the tables
    may; the Agents SDK skips them too, rather than failing every read.
    ``done`` says what happened to such a row, for the warning ("skipped" by
    a read, "removed" by a pop).
    """
    items: list[dict[str, Any]] = []
    left_out = 0
    for text in texts:
        try:
            item = loads(text)
        except (TypeError, ValueError):
            item = None
        if not isinstance(item, dict):
            logger.warning(
                "session %r: %s a stored item that is not valid JSON (%d characters)",
                session_id,
                done,
                len(text) if isinstance(text, str) else -1,
            )
            left_out += 1
            continue
        items.append(item)
    box = _UNREADABLE.get()
    if box is not None:
        box[0] = left_out
    return items


def check_sqlite_table_names(sessions_table: Any, messages_table: Any) -> None:
    """Refuse a ``SessionSettings`` in a table name's position, naming the change.

    ``SQLiteSession`` takes the SDK's positional order (``session_id, db_path,
    sessions_table, messages_table, session_settings``); Lattice once took
    ``session_settings`` third.
    """
    for name, value in (("sessions_table", sessions_table), ("messages_table", messages_table)):
        if not isinstance(value, str):
            raise TypeError(
                f"{name} must be a str, not {type(value).__name__}; SQLiteSession takes the "
                "Agents SDK's arguments (session_id, db_path, sessions_table, messages_table, "
                "session_settings): pass settings as session_settings=..."
            )
