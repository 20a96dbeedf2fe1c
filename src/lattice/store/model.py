"""What the store hands back, and the session metadata codec (no I/O here)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..items import check_session_id, encode_item
from ..schema import METADATA_MAX_BYTES

__all__ = [
    "DeleteResult",
    "ExportResult",
    "ImportResult",
    "OnConflict",
    "SessionInfo",
    "SessionPage",
    "decode_metadata",
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
            check_session_id(owner, 'metadata["owner"]')
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
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


@dataclass(frozen=True)
class SessionPage:
    """One page of :meth:`SessionStore.list_sessions`.

    Attributes:
        sessions: The sessions, newest activity first.
        next_cursor: Pass it as ``cursor=`` for the next page; ``None`` on the last.
    """

    sessions: list[SessionInfo]
    next_cursor: str | None

    def __iter__(self) -> Iterator[SessionInfo]:
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self.sessions)
