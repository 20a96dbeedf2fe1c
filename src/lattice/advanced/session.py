"""``AdvancedSQLAlchemySession``: branches, turns, usage and search on every backend.

The Agents SDK's ``AdvancedSQLiteSession`` API over Lattice's tables (see
:mod:`lattice.schema_advanced` for how branches reference items instead of
copying them). Every write is one transaction of the write protocol
(:mod:`lattice.advanced.ops`); reads are single statements.

The *current branch* belongs to the session object, as in the SDK. A run of
the Agents SDK's ``Runner`` passes its run context (``wrapper=``) to every
session call: the run stays on the branch it read its history from, so a
branch created, switched to or deleted while the run is in flight never gets
half of its turn. ``store_run_usage(result)`` finds the turn that run wrote
the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from .. import sdk_parity, writes
from ..drivers import Operations, Runner, SQLAlchemyDriver
from ..errors import PutBackFailedError, WriteOutcomeUnknownError
from ..items import check_session_id, decode_item, encode_items
from ..protocol import InputItem, InputItems
from ..schema_advanced import BRANCH_ACTIVE, MAIN_BRANCH
from ..sqlalchemy_session import SQLAlchemySession
from . import branching, classify, ops, reads
from .tables import Tables

if TYPE_CHECKING:
    from agents.result import RunResult

__all__ = ["AdvancedSQLAlchemySession"]

_T = TypeVar("_T")
_PINS = "_lattice_branch_pins"


@dataclass
class _Pin:
    """What one run did on this session: its branch, the turn it opened, its usage key."""

    branch: str
    turn: int | None = None
    anchor: int | None = None
    key: str = field(default_factory=writes.new_token)


class AdvancedSQLAlchemySession(SQLAlchemySession):
    """A session with conversation branches, turns, token usage and search.

    Constructed like :class:`lattice.SQLAlchemySession` (``engine=`` or
    :meth:`from_url`), plus ``logger=``. It is a plain ``Session`` too: the
    Runner reads and writes the current branch, which starts as ``"main"``.
    """

    def _init(self, session_id: str, **kwargs: Any) -> None:
        super()._init(session_id, **kwargs)
        self._branch = MAIN_BRANCH
        self._logger = logging.getLogger("lattice.advanced")
        self._advanced: writes.Bound | None = None

    def __init__(self, session_id: str, *, logger: logging.Logger | None = None, **kwargs: Any):
        super().__init__(session_id, **kwargs)
        if logger is not None:
            self._logger = logger

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        engine_kwargs: dict[str, Any] | None = None,
        logger: logging.Logger | None = None,
        **kwargs: Any,
    ) -> AdvancedSQLAlchemySession:
        """As :meth:`lattice.SQLAlchemySession.from_url`, with ``logger=``."""
        made = cast(
            "AdvancedSQLAlchemySession",
            super().from_url(session_id, url=url, engine_kwargs=engine_kwargs, **kwargs),
        )
        if logger is not None:
            made._logger = logger
        return made

    @property
    def current_branch_id(self) -> str:
        """The branch this object reads and writes when no run pins another."""
        return self._branch

    # -- plumbing --------------------------------------------------------------------

    async def _bound_advanced(self) -> tuple[writes.Bound, Tables]:
        base = await self._bind()
        bound = self._advanced
        if bound is None or bound.engine is not base.engine:
            # The general SQLAlchemy path: its runner exposes the connection,
            # on which the advanced statements run beside the named ones.
            driver = SQLAlchemyDriver(base.engine.dialect.driver)
            bound = self._advanced = writes.Bound(
                base.engine,
                base.state,
                driver,
                Operations(driver, base.ops.rules, base.state),
                base.tables,
            )
        return bound, Tables(bound.tables)

    async def _write(
        self,
        body: Callable[[ops.Tx], Awaitable[_T]],
        undo: Any = None,
        after: Callable[[_T], None] | None = None,
    ) -> _T:
        bound, t = await self._bound_advanced()
        sid = self.session_id

        async def attempt(run: Runner, token: str) -> _T:
            conn = cast("Any", run).connection
            return await body(ops.Tx(run, conn, t, sid, token, bound.ops))

        async def operation() -> _T:
            result = await writes.run_write(bound, sid, attempt)
            if after is not None:
                after(result)  # in the write's own task: done even if the caller is cancelled
            return result

        return await writes.shielded(operation, undo=undo)

    async def _read(self, body: Callable[[AsyncConnection, Tables], Awaitable[_T]]) -> _T:
        bound, t = await self._bound_advanced()

        async def attempt(run: Runner) -> _T:
            return await body(cast("Any", run).connection, t)

        return await writes.read(bound, attempt)

    def _pin(self, wrapper: Any) -> _Pin | None:
        """The run's pin on this session, made on its first call (``None`` without a run)."""
        if wrapper is None:
            return None
        pins = getattr(wrapper, _PINS, None)
        if pins is None:
            pins = {}
            try:
                setattr(wrapper, _PINS, pins)
            except AttributeError:
                return None
        pin: _Pin | None = pins.get(id(self))
        if pin is None:
            pin = pins[id(self)] = _Pin(self._branch)
        return pin

    def _target(self, wrapper: Any) -> tuple[str, _Pin | None]:
        pin = self._pin(wrapper)
        return (pin.branch if pin is not None else self._branch), pin

    def _landed(self, asked: str, branch: str) -> None:
        """A write aimed at ``asked`` went to ``branch`` (``main`` after a clear)."""
        if branch != asked and self._branch == asked:
            self._branch = branch

    # -- the Session protocol --------------------------------------------------------

    async def get_items(
        self, limit: int | None = None, branch_id: str | None = None, *, wrapper: Any = None
    ) -> list[InputItem]:
        """The latest ``limit`` items of a branch (the current one by default), oldest first."""
        limit = self._limit(limit)
        if limit is not None and limit <= 0:
            return []
        branch = branch_id if branch_id is not None else self._target(wrapper)[0]
        sid = self.session_id
        window = limit
        while True:
            texts = await self._read(
                lambda conn, t, w=window: reads.items(conn, t, sid, branch, w)  # type: ignore[misc]
            )
            found = sdk_parity.decode_rows(texts, sid)
            if limit is None or len(found) >= limit or len(texts) < (window or 0):
                return cast("list[InputItem]", found if limit is None else found[-limit:])
            window = 2 * (window or 1)  # unreadable rows in the window: widen it

    async def add_items(self, items: InputItems, *, wrapper: Any = None) -> None:
        """Append ``items`` to the current branch as one batch (all stored, contiguous, or none).

        Raises:
            TypeError, ValueError: an item cannot be stored (nothing is written).
            ValueError: the branch was deleted meanwhile (nothing is written).
        """
        texts = encode_items(items, self._max_item_bytes)
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if not texts:
            return
        if self._ensure_ascii:
            texts = sdk_parity.ascii_texts(items)
        branch, pin = self._target(wrapper)
        batch = list(items)

        def after(done: ops.Appended) -> None:
            self._landed(branch, done.branch)
            if pin is not None:
                pin.branch = done.branch
                if done.turn is not None and pin.turn is None:
                    pin.turn, pin.anchor = done.turn, done.anchor

        continues = pin.turn if pin is not None else None
        await self._write(lambda tx: ops.append(tx, branch, batch, texts, continues), after=after)

    async def pop_item(self, *, wrapper: Any = None) -> InputItem | None:
        """Remove and return the newest item of the current branch, or ``None``.

        Exactly once, as for plain sessions: cancelled after the removal
        committed, the item is put back. Its message row stays while another
        branch holds it; the turn it opened loses its usage row, as in the SDK.
        """
        return await self._pop_branch(self._target(wrapper)[0], None)

    async def _pop_item_with_validation(
        self, validate: Callable[[InputItem], None] | None = None
    ) -> InputItem | None:
        """``pop_item``, with ``validate(item)`` run before the removal commits.

        If ``validate`` raises, the item stays where it was and the exception propagates.
        """

        def check(text: str) -> None:
            try:
                item = decode_item(text)
            except ValueError:
                return
            if validate is not None:
                validate(cast("InputItem", item))

        return await self._pop_branch(self._branch, check)

    async def _pop_branch(self, branch: str, check: Any) -> InputItem | None:
        sid = self.session_id
        while True:
            try:
                popped = await self._write(
                    lambda tx: ops.pop(tx, branch, check), undo=self._put_back_item
                )
            except (WriteOutcomeUnknownError, PutBackFailedError) as exc:
                if isinstance(exc.result, ops.PoppedItem):
                    exc.result = decode_item(exc.result.text)
                raise
            if popped is None:
                return None
            found = sdk_parity.decode_rows([popped.text], sid, "removed")
            if found:
                return cast("InputItem", found[0])

    async def _put_back_item(self, popped: ops.PoppedItem) -> None:
        """Return a popped item to its branch (its caller was cancelled); see ``ops.put_back``."""
        await self._write(lambda tx: ops.put_back(tx, popped))

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Remove every item, branch and usage row; the current branch is ``main`` again.

        Branch ids stay used: a later branch cannot take the name of one cleared.
        """

        def after(_: None) -> None:
            self._branch = MAIN_BRANCH

        await self._write(ops.clear, after=after)

    # -- whole-history replacement, on the current branch ------------------------

    async def replace_items(self, items: InputItems) -> None:
        """Replace the current branch's items with ``items`` in one transaction."""
        texts = encode_items(items, self._max_item_bytes)
        if self._ensure_ascii:
            texts = sdk_parity.ascii_texts(items)
        batch = list(items)
        branch = self._branch
        done = await self._write(lambda tx: branching.replace(tx, branch, batch, texts))
        self._landed(branch, done)

    async def _atomic_replace_items(self, items: list[InputItem]) -> bool:
        """The Agents SDK's hook: :meth:`replace_items` on the current branch."""
        await self.replace_items(items)
        return True

    async def _get_compaction_snapshot(
        self, limit: int, *, prune_prefix: Callable[[InputItem], bool] | None = None
    ) -> Any:
        """The Agents SDK's compaction hook, on the current branch (see lattice.compaction)."""
        return await branching.snapshot(self, limit)

    # -- branches ----------------------------------------------------------------

    async def create_branch_from_turn(
        self, turn_number: int, branch_name: str | None = None
    ) -> str:
        """Make a branch of the current one holding its turns before ``turn_number``; switch to it.

        Nothing is copied but one row per stored batch before that turn.

        Raises:
            ValueError: the turn has no user message, or ``branch_name`` is
                blank or was used before in this session.
        """
        if isinstance(turn_number, bool) or not isinstance(turn_number, int):
            raise TypeError("turn_number must be an int")
        if branch_name is not None:
            if not isinstance(branch_name, str) or not branch_name.strip():
                raise ValueError("Branch name cannot be empty")
            check_session_id(branch_name)
        source = self._branch

        def after(made: tuple[str, str, Any]) -> None:
            self._branch = made[0]

        name, source, content = await self._write(
            lambda tx: branching.create(tx, source, turn_number, branch_name), after=after
        )
        self._logger.debug("Created branch %r from turn %s of %r", name, turn_number, source)
        del content
        return name

    async def create_branch_from_content(
        self, search_term: str, branch_name: str | None = None
    ) -> str:
        """Branch from the earliest user turn whose content contains ``search_term``."""
        turns = await self.find_turns_by_content(search_term)
        if not turns:
            raise ValueError(f"No user turns found containing '{search_term}'")
        return await self.create_branch_from_turn(turns[0]["turn"], branch_name)

    async def switch_to_branch(self, branch_id: str) -> None:
        """Make ``branch_id`` the current branch. Raises ``ValueError`` if it does not exist."""
        sid = self.session_id
        state = await self._read(lambda conn, t: reads.branch_state(conn, t, sid, branch_id))
        if branch_id != MAIN_BRANCH and state != BRANCH_ACTIVE:
            raise ValueError(f"Branch '{branch_id}' does not exist")
        old, self._branch = self._branch, branch_id
        self._logger.info("Switched from branch %r to %r", old, branch_id)

    async def delete_branch(self, branch_id: str, force: bool = False) -> None:
        """Delete a branch, its usage, and the items no other branch holds; its id stays used.

        Raises:
            ValueError: the branch is ``main``, does not exist, or is the
                current one and ``force`` is false (with ``force``, the
                session switches to ``main`` first).
        """
        if not isinstance(branch_id, str) or not branch_id.strip():
            raise ValueError("Branch ID cannot be empty")
        if branch_id == MAIN_BRANCH:
            raise ValueError("Cannot delete the 'main' branch")
        if branch_id == self._branch:
            if not force:
                raise ValueError(
                    f"Cannot delete current branch '{branch_id}'. Use force=True or "
                    "switch branches first"
                )
            await self.switch_to_branch(branch_id)  # exists, or ValueError
            self._branch = MAIN_BRANCH
        await self._write(lambda tx: branching.delete(tx, branch_id))
        self._logger.info("Deleted branch %r", branch_id)

    async def list_branches(self) -> list[dict[str, Any]]:
        """The session's branches: ``branch_id``, ``message_count``, ``user_turns``,
        ``is_current``, ``created_at`` (plus ``parent_branch_id`` and ``from_turn``)."""
        sid = self.session_id
        found = await self._read(lambda conn, t: reads.branches(conn, t, sid))
        for branch in found:
            branch["is_current"] = branch["branch_id"] == self._branch
        return found

    # -- turns and search --------------------------------------------------------

    def _branch_or_current(self, branch_id: str | None) -> str:
        return self._branch if branch_id is None else branch_id

    async def get_conversation_turns(self, branch_id: str | None = None) -> list[dict[str, Any]]:
        """The branch's user turns: ``turn``, ``content`` (cut to 100), ``full_content``,
        ``timestamp``, ``can_branch``."""
        return await self._turns(branch_id, 100)

    async def _turns(self, branch_id: str | None, cut: int | None) -> list[dict[str, Any]]:
        sid, branch = self.session_id, self._branch_or_current(branch_id)
        rows = await self._read(lambda conn, t: reads.user_turns(conn, t, sid, branch))
        found = []
        for turn, text, created in rows:
            try:
                content = decode_item(text).get("content", "")
            except (ValueError, AttributeError):
                continue
            found.append(
                {
                    "turn": turn,
                    "content": reads.preview(content, cut),
                    "full_content": content,
                    "timestamp": reads.timestamp(created),
                    "can_branch": True,
                }
            )
        return found

    async def find_turns_by_content(
        self, search_term: str, branch_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The branch's user turns whose text contains ``search_term`` (ASCII case ignored)."""
        return [
            turn
            for turn in await self._turns(branch_id, None)
            if classify.content_matches(turn["full_content"], search_term)
        ]

    async def get_conversation_by_turns(
        self, branch_id: str | None = None
    ) -> dict[int, list[dict[str, str | None]]]:
        """The branch's items grouped by turn: ``{turn: [{"type", "tool_name"}, ...]}``."""
        sid, branch = self.session_id, self._branch_or_current(branch_id)
        rows = await self._read(lambda conn, t: reads.structure_rows(conn, t, sid, branch))
        turns: dict[int, list[dict[str, str | None]]] = {}
        for turn, kind, tool in rows:
            turns.setdefault(turn, []).append({"type": kind, "tool_name": tool})
        return turns

    async def get_tool_usage(self, branch_id: str | None = None) -> list[tuple[str, int, int]]:
        """``(tool_name, uses, turn)`` for each tool used in each turn of the branch."""
        sid, branch = self.session_id, self._branch_or_current(branch_id)
        rows = await self._read(lambda conn, t: reads.structure_rows(conn, t, sid, branch))
        return classify.tool_usage(rows)

    # -- usage -------------------------------------------------------------------

    async def store_run_usage(self, result: RunResult) -> None:
        """Record the token usage of a finished run against the turn it wrote.

        Call it after ``Runner.run``. Retrying it for the same result writes
        the run's usage once (the row of a turn is replaced, not added to).
        As in the SDK, a failure is logged, not raised.
        """
        try:
            wrapper = result.context_wrapper
            usage = getattr(wrapper, "usage", None)
            if usage is None:
                return
            pins = getattr(wrapper, _PINS, None) or {}
            pin: _Pin | None = pins.get(id(self))
            if pin is None:
                pin = _Pin(self._branch)
            values = branching.usage_values(usage, pin.key)
            branch, turn, anchor = pin.branch, pin.turn, pin.anchor
            stored = await self._write(
                lambda tx: branching.store_usage(tx, branch, turn, anchor, values)
            )
            if not stored:
                self._logger.debug("No turn to store usage on in branch %r", branch)
        except Exception:
            self._logger.exception("Failed to store session usage of %r", self.session_id)

    async def get_session_usage(self, branch_id: str | None = None) -> dict[str, int] | None:
        """Usage summed over all turns (of one branch, or of every branch), or ``None``."""
        sid = self.session_id
        return await self._read(lambda conn, t: reads.session_usage(conn, t, sid, branch_id))

    async def get_turn_usage(
        self, user_turn_number: int | None = None, branch_id: str | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Usage of one turn (a dict, ``{}`` if none) or of every turn of the branch (a list)."""
        sid, branch = self.session_id, self._branch_or_current(branch_id)
        rows = await self._read(
            lambda conn, t: reads.turn_usage(conn, t, sid, branch, user_turn_number)
        )
        if user_turn_number is None:
            return rows
        if not rows:
            return {}
        found = dict(rows[0])
        del found["user_turn_number"]
        return found
