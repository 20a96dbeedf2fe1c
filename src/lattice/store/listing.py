"""Which sessions a call applies to: filters, keyset positions, cursors, and the walk.

Pages are cut by keyset on ``(updated_at, session_id)``, so a page costs the
same however deep it is, and a session written between two pages moves to the
front rather than shifting the others.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from sqlalchemy import Dialect, and_, func, literal, or_
from sqlalchemy.sql.expression import ColumnElement

from ..dialects import rules
from ..items import check_session_id
from ..schema import LatticeTables, SessionId, UtcDateTime
from .core import StoreCore
from .model import SessionInfo

__all__ = [
    "WALK_CHUNK",
    "FilterArgs",
    "Filters",
    "decode_cursor",
    "encode_cursor",
    "json_equal",
    "keyset_after",
    "keyset_before",
    "walk",
]

#: Sessions read per query while walking the catalogue.
WALK_CHUNK = 500


def _aware(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (for example datetime.now(timezone.utc))")
    return value.astimezone(dt.timezone.utc)


class FilterArgs(TypedDict, total=False):
    """The filter keywords the store's listing, counting and deleting methods share."""

    prefix: str | None
    owner: str | None
    metadata: Mapping[str, Any] | None
    updated_after: dt.datetime | None
    updated_before: dt.datetime | None


@dataclass(frozen=True)
class Filters:
    """Which sessions a listing, count or deletion applies to.

    ``owner`` and the time bounds become SQL conditions on indexed columns;
    ``prefix`` is an SQL condition checked row by row; ``metadata`` (equality
    of top-level keys) is matched in Python on rows the SQL conditions let
    through, so that the filter means the same on every database.
    """

    prefix: str | None = None
    owner: str | None = None
    metadata: Mapping[str, Any] | None = None
    updated_after: dt.datetime | None = None
    updated_before: dt.datetime | None = None

    @classmethod
    def make(
        cls,
        *,
        prefix: str | None = None,
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        updated_after: dt.datetime | None = None,
        updated_before: dt.datetime | None = None,
    ) -> Filters:
        """Validate the arguments and build the filters.

        A ``metadata`` filter with an ``"owner"`` string is folded into ``owner``
        so that it uses the owner index.
        """
        if prefix is not None:
            if not isinstance(prefix, str):
                raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
            if prefix:
                check_session_id(prefix)
            else:
                prefix = None
        if owner is not None:
            if not isinstance(owner, str):
                raise TypeError(f"owner must be a str, not {type(owner).__name__}")
            check_session_id(owner)
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
            metadata = dict(metadata)
            meta_owner = metadata.get("owner")
            if isinstance(meta_owner, str):
                if owner is not None and owner != meta_owner:
                    raise ValueError("owner and metadata['owner'] disagree")
                owner = meta_owner
                del metadata["owner"]
            metadata = metadata or None
        after = None if updated_after is None else _aware(updated_after, "updated_after")
        before = None if updated_before is None else _aware(updated_before, "updated_before")
        return cls(prefix, owner, metadata, after, before)

    @property
    def empty(self) -> bool:
        """True when the filters select every session."""
        return not (
            self.prefix or self.owner or self.metadata or self.updated_after or self.updated_before
        )

    def where(self, tables: LatticeTables, dialect: Dialect) -> list[ColumnElement[bool]]:
        """The SQL conditions (everything but the ``metadata`` filter)."""
        s = tables.sessions
        conditions: list[ColumnElement[bool]] = []
        if self.owner is not None:
            conditions.append(s.c.owner == literal(self.owner, SessionId()))
        if self.updated_after is not None:
            conditions.append(s.c.updated_at > literal(self.updated_after, UtcDateTime()))
        if self.updated_before is not None:
            conditions.append(s.c.updated_at < literal(self.updated_before, UtcDateTime()))
        if self.prefix is not None:
            # Not LIKE: SQLite's LIKE ignores ASCII case. substr() counts
            # characters or bytes (Rules.prefix_in_bytes); comparing with "="
            # is exact everywhere.
            length = rules(dialect).prefix_length(self.prefix)
            conditions.append(
                func.substr(s.c.session_id, 1, length, type_=SessionId())
                == literal(self.prefix, SessionId())
            )
        return conditions

    def matches_metadata(self, metadata: Mapping[str, Any]) -> bool:
        """True when ``metadata`` has every key of the ``metadata`` filter, equal."""
        if not self.metadata:
            return True
        return all(
            key in metadata and json_equal(metadata[key], v) for key, v in self.metadata.items()
        )


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values by type: ``true`` is not ``1``, and ``1`` is not ``1.0``.

    Python's ``==`` says ``True == 1 == 1.0``, so a filter on
    ``{"archived": True}`` would also match (and delete) sessions whose
    ``archived`` is ``1``. JSON keeps them apart, and so does Lattice, which
    round-trips ``1`` and ``1.0`` as different texts.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def keyset_before(
    tables: LatticeTables, updated_at: dt.datetime, session_id: str
) -> ColumnElement[bool]:
    """Rows after ``(updated_at, session_id)`` in newest-first order.

    Written as ``updated_at <= t AND (updated_at < t OR session_id < id)``
    rather than a row-value comparison: every optimiser (MariaDB's included)
    turns the first half into an index range, so a deep page costs what the
    first one does.
    """
    s = tables.sessions
    t = literal(updated_at, UtcDateTime())
    return and_(
        s.c.updated_at <= t,
        or_(s.c.updated_at < t, s.c.session_id < literal(session_id, SessionId())),
    )


def keyset_after(
    tables: LatticeTables, updated_at: dt.datetime, session_id: str
) -> ColumnElement[bool]:
    """Rows after ``(updated_at, session_id)`` in oldest-first order."""
    s = tables.sessions
    t = literal(updated_at, UtcDateTime())
    return and_(
        s.c.updated_at >= t,
        or_(s.c.updated_at > t, s.c.session_id > literal(session_id, SessionId())),
    )


_CURSOR_VERSION = 1


def encode_cursor(updated_at: dt.datetime, session_id: str) -> str:
    """An opaque cursor for the position just after this session."""
    payload = json.dumps([_CURSOR_VERSION, updated_at.isoformat(), session_id], ensure_ascii=False)
    return base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The position a cursor from :func:`encode_cursor` stands for.

    Raises:
        ValueError: ``cursor`` was not made by this version of Lattice (or was
            changed): never a database error, whatever it holds.
    """
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str, not {type(cursor).__name__}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, stamp, session_id = json.loads(raw.decode("utf-8"))
        if version != _CURSOR_VERSION or not isinstance(stamp, str):
            raise ValueError
        check_session_id(session_id)
        when = dt.datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError
        # A time every database can compare with (UTC, years 1000 to 9998).
        when = when.astimezone(dt.timezone.utc)
        if not 1000 <= when.year <= 9998:
            raise ValueError
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise ValueError(
            f"invalid cursor {cursor[:40]!r}: pass the next_cursor of a previous page"
        ) from None
    return when, session_id


async def walk(
    core: StoreCore,
    filters: Filters,
    *,
    newest_first: bool,
    start: tuple[dt.datetime, str] | None = None,
    chunk: int = WALK_CHUNK,
    replica: bool = False,
) -> AsyncIterator[SessionInfo]:
    """Every matching session in activity order, read ``chunk`` rows at a time.

    No connection is held between chunks, so the caller may write while
    iterating. With ``replica`` the chunks are read on the store's read
    engine (retention walks the primary: what it deletes must be current).
    """
    s = core.tables.sessions
    conditions = filters.where(core.tables, core.engine.dialect)
    if newest_first:
        order = [s.c.updated_at.desc(), s.c.session_id.desc()]
        after = keyset_before
    else:
        order = [s.c.updated_at.asc(), s.c.session_id.asc()]
        after = keyset_after
    position = start
    while True:
        query = core.info_columns().where(*conditions)
        if position is not None:
            query = query.where(after(core.tables, *position))
        rows = await core.read(query.order_by(*order).limit(chunk), replica=replica)
        for row in rows:
            info = SessionInfo.from_row(row)
            if filters.matches_metadata(info.metadata):
                yield info
        if len(rows) < chunk:
            return
        position = (rows[-1][2], rows[-1][0])
