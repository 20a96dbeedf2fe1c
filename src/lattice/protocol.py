"""The session contract: ``Session``, ``SessionABC`` and ``SessionSettings``.

``Session`` has the same shape as the OpenAI Agents SDK's protocol, so any
Lattice session can be handed to ``agents.Runner.run(..., session=...)``
without an adapter, and any object of that shape can be tested with
:mod:`lattice.testing`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MAX_LIMIT",
    "Session",
    "SessionABC",
    "SessionSettings",
    "coerce_settings",
    "resolve_limit",
]

#: Larger ``get_items`` limits mean the whole history.
MAX_LIMIT = 2**62


@dataclasses.dataclass
class SessionSettings:
    """Default options for a session's reads.

    Attributes:
        limit: How many of the latest items ``get_items()`` returns when it is
            called without an explicit ``limit``. ``None`` means the whole history.
    """

    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int)
        ):
            raise TypeError(
                f"SessionSettings.limit must be an int or None, not {type(self.limit).__name__}"
            )

    def resolve(self, override: Any) -> SessionSettings:
        """Return new settings with the non-None fields of ``override`` laid over these.

        Args:
            override: A Lattice ``SessionSettings``, the Agents SDK's
                ``SessionSettings`` (anything with the same attributes), a mapping,
                or ``None``.
        """
        if override is None:
            return self
        values = _settings_fields(override)
        changes = {name: value for name, value in values.items() if value is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict."""
        return dataclasses.asdict(self)


def _settings_fields(value: Any) -> dict[str, Any]:
    names = [field.name for field in dataclasses.fields(SessionSettings)]
    if isinstance(value, Mapping):
        unknown = set(value) - set(names)
        if unknown:
            raise TypeError(f"unknown session setting(s): {', '.join(sorted(map(str, unknown)))}")
        return {name: value.get(name) for name in names}
    if all(hasattr(value, name) for name in names):
        return {name: getattr(value, name) for name in names}
    raise TypeError(
        f"session settings must be a SessionSettings, a dict or None, not {type(value).__name__}"
    )


def coerce_settings(value: Any) -> SessionSettings | None:
    """Turn a Lattice or Agents SDK ``SessionSettings``, a dict or ``None`` into ours."""
    if value is None or isinstance(value, SessionSettings):
        return value
    return SessionSettings(**_settings_fields(value))


def resolve_limit(explicit: int | None, settings: SessionSettings | None) -> int | None:
    """The effective ``get_items`` limit: the explicit argument wins over the settings."""
    limit = explicit if explicit is not None else (settings.limit if settings else None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit is not None and limit > MAX_LIMIT:
        # More than any session can hold, and more than a database's LIMIT
        # takes (a 64-bit integer): the whole history.
        return None
    return limit


@runtime_checkable
class Session(Protocol):
    """What an agent runner needs from conversation memory.

    Items are JSON-compatible dicts (Responses API input items). Reads return
    them in chronological order.
    """

    session_id: str
    session_settings: SessionSettings | None

    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the latest ``limit`` items (all when ``None``), oldest first."""
        ...

    async def add_items(self, items: list[dict[str, Any]]) -> None:
        """Append ``items`` to the history as one batch."""
        ...

    async def pop_item(self) -> dict[str, Any] | None:
        """Remove and return the newest item, or ``None`` when the session is empty."""
        ...

    async def clear_session(self) -> None:
        """Remove every item of this session."""
        ...


class SessionABC(ABC):
    """Base class for session implementations; the methods of :class:`Session`."""

    session_id: str
    session_settings: SessionSettings | None = None

    @abstractmethod
    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the latest ``limit`` items (all when ``None``), oldest first."""

    @abstractmethod
    async def add_items(self, items: list[dict[str, Any]]) -> None:
        """Append ``items`` to the history as one batch."""

    @abstractmethod
    async def pop_item(self) -> dict[str, Any] | None:
        """Remove and return the newest item, or ``None`` when the session is empty."""

    @abstractmethod
    async def clear_session(self) -> None:
        """Remove every item of this session."""
