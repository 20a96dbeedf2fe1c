"""The session contract: ``Session``, ``SessionABC`` and ``SessionSettings``.

``Session`` has the same shape as the OpenAI Agents SDK's protocol, so any
Lattice session can be handed to ``agents.Runner.run(..., session=...)``
without an adapter, and any object of that shape can be tested with
:mod:`lattice.testing`.

``SessionSettings`` *is* the SDK's class (``agents.memory.SessionSettings``)
when the ``openai-agents`` package is installed, so the SDK accepts Lattice's
settings everywhere (``RunConfig``, ``EncryptedSession``, ...). Without the
SDK it is Lattice's own dataclass with the same fields and methods. The SDK
takes seconds to import, so the choice is made on first use of the name, not
by ``import lattice``.

Items are typed as the SDK's ``TResponseInputItem`` for type checkers (so
``s: agents.memory.Session = SQLiteSession("x")`` passes ``mypy --strict``);
at run time they are plain dicts.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from typing import TypeAlias

    from agents.items import TResponseInputItem as InputItem
    from agents.memory import SessionSettings

    #: What the sessions' ``add_items`` accepts: the SDK's items, or plain
    #: dicts (a wider parameter than the protocol's, so both type-check).
    InputItems: TypeAlias = "list[InputItem] | list[dict[str, Any]]"
else:
    InputItem = dict[str, Any]
    InputItems = list[dict[str, Any]]

__all__ = [
    "MAX_LIMIT",
    "InputItem",
    "InputItems",
    "Session",
    "SessionABC",
    "SessionSettings",
    "coerce_settings",
    "resolve_limit",
    "settings_class",
]

#: Larger ``get_items`` limits mean the whole history.
MAX_LIMIT = 2**62


@dataclasses.dataclass
class LatticeSessionSettings:
    """Default options for a session's reads (used when the Agents SDK is not installed).

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

    def resolve(self, override: Any) -> LatticeSessionSettings:
        """Return new settings with the non-None fields of ``override`` laid over these.

        Args:
            override: A ``SessionSettings`` (anything with the same attributes),
                a mapping, or ``None``.
        """
        if override is None:
            return self
        values = _settings_fields(override)
        changes = {name: value for name, value in values.items() if value is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict."""
        return dataclasses.asdict(self)


# Shown as ``lattice.SessionSettings`` in reprs and errors.
LatticeSessionSettings.__name__ = LatticeSessionSettings.__qualname__ = "SessionSettings"

_FIELDS = ("limit",)
_settings_class: Any = None


def settings_class() -> type[SessionSettings]:
    """The class ``lattice.SessionSettings`` names: the SDK's if it is installed, else ours."""
    global _settings_class
    if _settings_class is None:
        try:
            from agents.memory.session_settings import SessionSettings as sdk_class
        except ImportError:
            _settings_class = LatticeSessionSettings
        else:
            _settings_class = sdk_class
    cls: type[SessionSettings] = _settings_class
    return cls


def __getattr__(name: str) -> Any:
    if name == "SessionSettings":
        return settings_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _settings_fields(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown session setting(s): {', '.join(sorted(map(str, unknown)))}")
        return {name: value.get(name) for name in _FIELDS}
    if all(hasattr(value, name) for name in _FIELDS):
        return {name: getattr(value, name) for name in _FIELDS}
    raise TypeError(
        f"session settings must be a SessionSettings, a dict or None, not {type(value).__name__}"
    )


def coerce_settings(value: Any) -> SessionSettings | None:
    """Turn a ``SessionSettings`` (the SDK's or Lattice's), a dict or ``None`` into the class."""
    if value is None:
        return None
    cls = settings_class()
    if isinstance(value, cls):
        return value
    fields = _settings_fields(value)
    limit = fields["limit"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        # The SDK's pydantic class would quietly turn "5" into 5; refuse it by name.
        raise TypeError(f"SessionSettings.limit must be an int or None, not {type(limit).__name__}")
    return cls(**fields)


def resolve_limit(explicit: int | None, settings: Any) -> int | None:
    """The effective ``get_items`` limit: the explicit argument wins over the settings."""
    limit = explicit if explicit is not None else getattr(settings, "limit", None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit is not None and limit > MAX_LIMIT:
        # More than any session can hold, and more than a database's LIMIT
        # takes (a 64-bit integer): the whole history.
        return None
    return limit


class DefaultSettings:
    """``session_settings`` as the SDK's sessions have it: ``SessionSettings()`` by default.

    A session made without settings reports ``SessionSettings()``, like the
    SDK's. The object is made on first read, so a session that is never asked
    for it (the CLI, a server without the SDK) does not import the SDK.
    Assigning ``None`` or a dict is accepted, as the SDK's classes accept it.
    """

    _settings: Any = None
    _settings_default = True

    def _set_settings(self, value: Any) -> None:
        """Constructor helper: ``None`` means the default ``SessionSettings()``."""
        self._settings = coerce_settings(value)
        self._settings_default = value is None

    @property
    def session_settings(self) -> SessionSettings | None:
        """Default read settings; ``SessionSettings()`` unless set."""
        if self._settings_default:
            self._settings = settings_class()()
            self._settings_default = False
        settings: SessionSettings | None = self._settings
        return settings

    @session_settings.setter
    def session_settings(self, value: SessionSettings | dict[str, Any] | None) -> None:
        self._settings = coerce_settings(value)
        self._settings_default = False

    def _limit(self, explicit: int | None) -> int | None:
        """The effective read limit, without making the default settings object."""
        return resolve_limit(explicit, None if self._settings_default else self._settings)


@runtime_checkable
class Session(Protocol):
    """What an agent runner needs from conversation memory.

    Items are JSON-compatible dicts (Responses API input items). Reads return
    them in chronological order.
    """

    session_id: str
    session_settings: SessionSettings | None

    async def get_items(self, limit: int | None = None) -> list[InputItem]:
        """Return the latest ``limit`` items (all when ``None``), oldest first."""
        ...

    async def add_items(self, items: list[InputItem]) -> None:
        """Append ``items`` to the history as one batch."""
        ...

    async def pop_item(self) -> InputItem | None:
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
    async def get_items(self, limit: int | None = None) -> list[InputItem]:
        """Return the latest ``limit`` items (all when ``None``), oldest first."""

    @abstractmethod
    async def add_items(self, items: list[InputItem]) -> None:
        """Append ``items`` to the history as one batch."""

    @abstractmethod
    async def pop_item(self) -> InputItem | None:
        """Remove and return the newest item, or ``None`` when the session is empty."""

    @abstractmethod
    async def clear_session(self) -> None:
        """Remove every item of this session."""
