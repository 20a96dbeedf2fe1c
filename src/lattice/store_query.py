"""The pieces of :class:`~lattice.store.SessionStore` queries: filters, cursors, metadata.

Kept apart from the store so that each part stays small and can be tested
on its own. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from sqlalchemy import Dialect, and_, func, literal, or_
from sqlalchemy.sql.expression import ColumnElement

from .items import encode_item
from .schema import METADATA_MAX_BYTES, LatticeTables, SessionId, UtcDateTime
from .sqlalchemy_session import check_session_id

__all__ = [
    "DeleteResult",
    "ExportResult",
    "FilterArgs",
    "Filters",
    "ImportResult",
    "OnConflict",
    "SessionInfo",
    "decode_cursor",
    "encode_cursor",
    "encode_metadata",
    "merge_patch",
]


#: What an import or copy does with a session that already exists.
OnConflict = Literal["skip", "replace", "append"]


@dataclass(frozen=True)
class SessionInfo:
    """What the catalogue knows about one session.

    Attributes:
        session_id: The session's id.
        created_at: When its row was created (aware UTC).
        updated_at: Its last activity: the last ``add_items``, ``pop_item``
            or ``clear_session`` (aware UTC). Metadata changes do not count.
        item_count: How many items it holds, kept exact by every write.
        metadata: The application's metadata (``{}`` when none was set).
    """

    session_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    item_count: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def owner(self) -> str | None:
        """The ``"owner"`` key of the metadata, if it is set."""
        owner = self.metadata.get("owner")
        return owner if isinstance(owner, str) else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601 text)."""
        return {
            "session_id": self.session_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "item_count": self.item_count,
            "metadata": self.metadata,
        }

    @classmethod
    def from_row(cls, row: Any) -> SessionInfo:
        """Build from a row of ``session_id, created_at, updated_at, item_count, metadata``."""
        return cls(
            session_id=row[0],
            created_at=row[1],
            updated_at=row[2],
            item_count=int(row[3]),
            metadata=decode_metadata(row[4]),
        )


@dataclass
class DeleteResult:
    """How much a deletion removed: ``sessions`` rows and the ``items`` they held."""

    sessions: int = 0
    items: int = 0

    def add(self, other: DeleteResult) -> None:
        """Add ``other``'s counts to these."""
        self.sessions += other.sessions
        self.items += other.items


@dataclass
class ExportResult:
    """How many sessions and items an export wrote."""

    sessions: int = 0
    items: int = 0


@dataclass
class ImportResult:
    """What an import or copy did, session by session, and the items it wrote.

    ``created``: sessions that did not exist; ``replaced``, ``appended``,
    ``skipped``: sessions that existed, by the conflict policy applied.
    """

    created: int = 0
    replaced: int = 0
    appended: int = 0
    skipped: int = 0
    items: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counts as a dict."""
        return dict(self.__dict__)


def encode_metadata(metadata: Any) -> tuple[str | None, str | None]:
    """Validate ``metadata`` and return ``(json_text, owner)``; ``{}`` is stored as NULL.

    Raises:
        TypeError: not a dict, or holding something JSON cannot represent, or an
            ``"owner"`` that is not a string.
        ValueError: over :data:`~lattice.schema.METADATA_MAX_BYTES`, or an invalid owner.
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    metadata = dict(metadata)
    try:
        text = encode_item(metadata, 0, METADATA_MAX_BYTES)
    except (TypeError, ValueError) as exc:
        # encode_item speaks of "item 0"; say what this really is.
        message = str(exc).replace("item 0", "metadata", 1).replace("(max_item_bytes)", "")
        raise type(exc)(message.rstrip()) from exc
    owner = metadata.get("owner")
    if owner is not None:
        if not isinstance(owner, str):
            raise TypeError(f'metadata["owner"] must be a string, not {type(owner).__name__}')
        try:
            check_session_id(owner)
        except ValueError as exc:
            raise ValueError(str(exc).replace("session_id", 'metadata["owner"]')) from exc
    return (text if metadata else None), owner


def decode_metadata(text: str | None) -> dict[str, Any]:
    """The metadata dict stored as ``text`` (``{}`` for NULL)."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``patch`` to ``target`` as a JSON Merge Patch (RFC 7396), returning a new dict.

    Keys of ``patch`` replace those of ``target``; a ``None`` value removes the
    key; a dict value is merged into a dict value the same way, recursively.
    """
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            current = merged.get(key)
            merged[key] = merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            merged[key] = value
    return merged


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
            # characters on PostgreSQL and SQLite, and bytes on MySQL, where
            # ids are binary strings; comparing with "=" is exact everywhere.
            mysql = dialect.name in ("mysql", "mariadb")
            length = len(self.prefix.encode("utf-8")) if mysql else len(self.prefix)
            conditions.append(
                func.substr(s.c.session_id, 1, length, type_=SessionId())
                == literal(self.prefix, SessionId())
            )
        return conditions

    def matches_metadata(self, metadata: Mapping[str, Any]) -> bool:
        """True when ``metadata`` has every key of the ``metadata`` filter, equal."""
        if not self.metadata:
            return True
        return all(key in metadata and metadata[key] == v for key, v in self.metadata.items())


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
        ValueError: ``cursor`` was not made by this version of Lattice.
    """
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str, not {type(cursor).__name__}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, stamp, session_id = json.loads(raw.decode("utf-8"))
        if version != _CURSOR_VERSION or not isinstance(session_id, str):
            raise ValueError
        when = dt.datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError(
            f"invalid cursor {cursor[:40]!r}: pass the next_cursor of a previous page"
        ) from None
    return when, session_id
