"""``RoutedSession``: pick the session (tables, database, tenant) from the run context.

The Agents SDK's Runner hands its run context (``RunContextWrapper``) to a
session whose four methods all take a ``wrapper=`` keyword. A
``RoutedSession`` uses it to choose, on every call, the session that holds
this conversation for the run's tenant::

    stores = {"acme": SessionStore.from_url(ACME_URL), "globex": SessionStore.from_url(GLOBEX_URL)}
    session = RoutedSession("conv_42", lambda ctx: stores[ctx.tenant].session("conv_42"))
    await Runner.run(agent, "hi", session=session, context=RequestContext(tenant="acme"))

``route`` gets ``wrapper.context`` (what the run was given as ``context=``),
or ``None`` when a method is called directly without ``wrapper=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .protocol import DefaultSettings, InputItem, InputItems, Session, SessionABC

if TYPE_CHECKING:
    from .protocol import SessionSettings

__all__ = ["RoutedSession"]


class RoutedSession(DefaultSettings, SessionABC):
    """A session that forwards each call to the session ``route(context)`` returns.

    Args:
        session_id: The conversation's id (what the Runner and logs see).
        route: Called with the run context (``None`` outside a run) on every
            call; returns the session to use. It may build one per call
            (``store.session(...)`` does no I/O) or return cached ones.
        session_settings: Default read settings, as for any session.

    Raises:
        TypeError: ``route`` is not callable, or returned something that is
            not a session.
    """

    def __init__(
        self,
        session_id: str,
        route: Callable[[Any], Session],
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        if not callable(route):
            raise TypeError(f"route must be callable, not {type(route).__name__}")
        self.session_id = session_id
        self._route = route
        self._set_settings(session_settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(session_id={self.session_id!r})"

    def target(self, wrapper: Any = None) -> Session:
        """The session ``route`` picks for ``wrapper``'s context (``None``: no run)."""
        context = getattr(wrapper, "context", None) if wrapper is not None else None
        chosen = self._route(context)
        if not isinstance(chosen, Session):
            raise TypeError(
                f"route returned a {type(chosen).__name__}, not a session "
                "(an object with get_items, add_items, pop_item and clear_session)"
            )
        return chosen

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[InputItem]:
        """The latest ``limit`` items of the routed session (settings apply as usual)."""
        return await self.target(wrapper).get_items(self._limit(limit))

    async def add_items(self, items: InputItems, *, wrapper: Any = None) -> None:
        """Append ``items`` to the routed session."""
        await self.target(wrapper).add_items(cast("list[InputItem]", items))

    async def pop_item(self, *, wrapper: Any = None) -> InputItem | None:
        """Remove and return the newest item of the routed session."""
        return await self.target(wrapper).pop_item()

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Clear the routed session."""
        await self.target(wrapper).clear_session()
