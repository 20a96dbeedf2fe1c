"""``SQLAlchemySession``: a session stored in SQLite, PostgreSQL or MySQL.

The session validates, then asks its engine's operations
(:mod:`lattice.drivers`) to run inside the write protocol
(:mod:`lattice.writes`); it knows nothing of dialects or drivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.ext.asyncio import AsyncEngine

from . import compaction, dialects, drivers, engines, sdk_parity, writes
from .drivers import Operations, Popped, Runner
from .errors import PutBackFailedError, WriteOutcomeUnknownError
from .items import DEFAULT_MAX_ITEM_BYTES, check_session_id, decode_item, encode_items
from .protocol import DefaultSettings, InputItem, InputItems, SessionABC
from .schema import (
    DEFAULT_MESSAGES_TABLE,
    DEFAULT_SESSIONS_TABLE,
    LatticeTables,
    lattice_tables,
)

if TYPE_CHECKING:
    from .protocol import SessionSettings

__all__ = ["SQLAlchemySession"]


def bind(engine: AsyncEngine, tables: LatticeTables) -> writes.Bound:
    """The engine as sessions on ``tables`` run on it: state, driver and operations."""
    state = engines.engine_state(engine)
    driver = drivers.driver_for(engine, state)
    ops = Operations(driver, dialects.rules(engine.dialect), state)
    return writes.Bound(engine, state, driver, ops, tables)


class SQLAlchemySession(DefaultSettings, SessionABC):
    """A conversation kept in two SQL tables through an async SQLAlchemy engine.

    Args:
        session_id: The conversation's id: 1 to 255 characters, compared exactly.
        engine: An ``AsyncEngine`` (``sqlite+aiosqlite``, ``postgresql+asyncpg``
            or ``mysql+aiomysql``). It stays the caller's: Lattice never disposes it.
        create_tables: Create the tables (if missing) on first use, once per
            engine. For development; deployments run ``lattice db upgrade``.
        sessions_table: Name of the sessions table.
        messages_table: Name of the messages table.
        session_settings: Default read settings (``SessionSettings``, the Agents
            SDK's class, or a dict).
        ensure_ascii: Store items with ``\\uXXXX`` escapes for non-ASCII text,
            as the Agents SDK's ``SQLAlchemySession`` does by default. Lattice's
            default, ``False``, stores UTF-8 text as itself (smaller, readable,
            searchable); both read back the same items.
        max_item_bytes: Largest accepted item, in bytes of UTF-8 JSON.
        configure_sqlite: On a SQLite file engine, set WAL mode, a 5 s busy
            timeout and ``synchronous = NORMAL`` on its connections, once per
            engine, as the Agents SDK's ``SQLAlchemySession`` does
            (:func:`lattice.engines.configure_sqlite`). ``False`` leaves the
            engine as it is.
    """

    def __init__(
        self,
        session_id: str,
        *,
        engine: AsyncEngine,
        create_tables: bool = False,
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        ensure_ascii: bool = False,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        configure_sqlite: bool = True,
    ) -> None:
        engines.check_engine(engine, "SQLAlchemySession")
        if not isinstance(configure_sqlite, bool):
            raise TypeError(
                f"configure_sqlite must be a bool, not {type(configure_sqlite).__name__}"
            )
        self._init(
            session_id,
            create_tables=create_tables,
            tables=lattice_tables(sessions_table, messages_table),
            session_settings=session_settings,
            max_item_bytes=max_item_bytes,
            ensure_ascii=ensure_ascii,
        )
        if configure_sqlite:
            engines.configure_sqlite(engine)
        self._fixed_engine: AsyncEngine | None = engine
        self._owns_engine = False
        self._url: Any = None
        self._engine_kwargs: dict[str, Any] = {}
        self._engine_key: tuple[str, str] | None = None

    def _init(
        self,
        session_id: str,
        *,
        create_tables: bool,
        tables: LatticeTables,
        session_settings: Any,
        max_item_bytes: int,
        ensure_ascii: bool = False,
    ) -> None:
        self.session_id = check_session_id(session_id)
        if not isinstance(ensure_ascii, bool):
            raise TypeError(f"ensure_ascii must be a bool, not {type(ensure_ascii).__name__}")
        self._ensure_ascii = ensure_ascii
        self._closed = False
        self._set_settings(session_settings)
        if isinstance(max_item_bytes, bool) or not isinstance(max_item_bytes, int):
            raise TypeError("max_item_bytes must be an int")
        if max_item_bytes < 1:
            raise ValueError("max_item_bytes must be positive")
        self._max_item_bytes = max_item_bytes
        self._tables = tables
        self._create_tables = create_tables
        self._bound: writes.Bound | None = None

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        engine_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SQLAlchemySession:
        """Make a session on the process's shared engine for ``url``.

        Sessions made from the same URL and ``engine_kwargs`` on one event loop
        share one engine and its pool. Lattice owns that engine; close it at
        shutdown with ``await lattice.dispose_engines()``. An in-memory SQLite
        URL gets an engine of its own, private to this session.

        Args:
            session_id: The conversation's id.
            url: An SQLAlchemy URL; ``postgresql://``, ``mysql://`` and
                ``sqlite://`` are mapped to the async drivers.
            engine_kwargs: Options for ``create_async_engine``.
            **kwargs: The keyword arguments of the constructor.
        """
        parsed = engines.normalize_url(url)
        options = dict(engine_kwargs or {})
        if engines.is_sqlite_memory(parsed):
            made = cls(session_id, engine=engines.make_engine(parsed, **options), **kwargs)
            made._owns_engine = True
            return made
        self = cls.__new__(cls)
        self._init(
            session_id,
            create_tables=kwargs.pop("create_tables", False),
            tables=lattice_tables(
                kwargs.pop("sessions_table", DEFAULT_SESSIONS_TABLE),
                kwargs.pop("messages_table", DEFAULT_MESSAGES_TABLE),
            ),
            session_settings=kwargs.pop("session_settings", None),
            max_item_bytes=kwargs.pop("max_item_bytes", DEFAULT_MAX_ITEM_BYTES),
            ensure_ascii=kwargs.pop("ensure_ascii", False),
        )
        # An engine Lattice makes has its SQLite settings already.
        kwargs.pop("configure_sqlite", None)
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        self._fixed_engine = None
        self._owns_engine = False
        self._url = parsed
        self._engine_kwargs = options
        self._engine_key = engines.shared_engine_key(parsed, options)
        # Fail now, not on first use, when the driver is missing.
        engines.shared_engine(parsed, options, key=self._engine_key)
        return self

    @property
    def engine(self) -> AsyncEngine:
        """The engine this session uses (on the running event loop)."""
        if self._fixed_engine is not None:
            return self._fixed_engine
        return engines.shared_engine(self._url, self._engine_kwargs, key=self._engine_key)

    @property
    def tables(self) -> LatticeTables:
        """The session's tables."""
        return self._tables

    def __repr__(self) -> str:
        return f"{type(self).__name__}(session_id={self.session_id!r})"

    def close(self) -> None:
        """Close the session: every later call raises ``RuntimeError`` (as in the SDK).

        Synchronous and idempotent, like the SDK's ``SQLiteSession.close()``.
        The stored items stay. An engine the session owns (in-memory SQLite)
        is disposed in a task on the running event loop; called outside a
        loop, its connection is released with the object. An engine passed
        in, or shared by ``from_url`` sessions, is left alone.
        """
        if self._closed:
            return
        self._closed = True
        owned = self._fixed_engine if self._owns_engine else None
        if owned is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: its connection goes with the object
        self._disposing = loop.create_task(owned.dispose())

    # -- plumbing ------------------------------------------------------------

    async def _bind(self) -> writes.Bound:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        engine = self.engine
        bound = self._bound
        # Rebound when the engine changes (a URL session on another loop) or its
        # driver does (EngineState.fast_path switched off, as tests do).
        if (
            bound is None
            or bound.engine is not engine
            or bound.driver is not drivers.driver_for(engine, bound.state)
        ):
            bound = self._bound = bind(engine, self._tables)
        if not bound.state.ready:
            await engines.check_ready(engine, bound.state)
        if self._create_tables and self._tables not in bound.state.created:
            await engines.ensure_tables(engine, bound.state, self._tables)
        return bound

    # -- the Session protocol --------------------------------------------------

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[InputItem]:
        """Return the latest ``limit`` items, oldest first.

        ``limit=None`` falls back to ``session_settings.limit``, then to the
        whole history; a limit of 0 or less returns ``[]``. ``wrapper`` (the
        Agents SDK's run context, passed by its Runner) is accepted and not
        used; see :class:`lattice.routing.RoutedSession`.

        A stored row that is not JSON (another program wrote it) is skipped
        with a warning, and ``limit`` counts readable items, as in the SDK.
        """
        limit = self._limit(limit)
        if limit is not None and limit <= 0:
            return []
        bound = await self._bind()
        session_id = self.session_id
        window = limit

        async def body(run: Runner) -> list[str]:
            return await bound.ops.read(run, session_id, window)

        while True:
            texts = await writes.read(bound, body)
            items = sdk_parity.decode_rows(texts, session_id)
            if limit is None or len(items) >= limit or len(texts) < (window or 0):
                found = items if limit is None else items[-limit:]
                return cast("list[InputItem]", found)
            window = 2 * (window or 1)  # unreadable rows in the window: widen it

    async def add_items(self, items: InputItems, *, wrapper: Any = None) -> None:
        """Append ``items`` as one batch: all are stored, contiguous, or none.

        Raises:
            TypeError: an item is not a dict or holds a non-JSON value.
            ValueError: an item holds NaN/Infinity or invalid text, or is too large.
        """
        texts = encode_items(items, self._max_item_bytes)
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if not texts:
            return
        if self._ensure_ascii:
            texts = sdk_parity.ascii_texts(items)
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner, token: str) -> None:
            await bound.ops.append(run, session_id, texts, token)

        await writes.shielded(
            lambda: writes.run_write(
                bound, session_id, body, autocommit=bound.ops.append_autocommits
            )
        )

    async def pop_item(self, *, wrapper: Any = None) -> InputItem | None:
        """Remove and return the newest item, or ``None`` if there is none.

        Each item goes to exactly one caller. If this call is cancelled after
        the database removed the item, the item is put back where it was. A
        row that is not JSON is removed with a warning, and the next item is
        popped instead, as the SDK's pop does.
        """
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner, token: str) -> Popped | None:
            return await bound.ops.pop(run, session_id, token)

        return await self._pop(bound, body)

    async def _pop_item_with_validation(
        self, validate: Callable[[InputItem], None] | None = None
    ) -> InputItem | None:
        """``pop_item``, with ``validate(item)`` run before the removal commits.

        The Agents SDK's optional hook (its ``EncryptedSession`` authenticates
        the ciphertext this way). If ``validate`` raises, the transaction rolls
        back: the item keeps its place and id, and the exception propagates.
        The item must be seen before it is deleted, so this takes the general
        shape of a pop (lock, read the newest, validate, delete, commit) on
        every backend.
        """
        bound = await self._bind()
        session_id = self.session_id

        def check(text: str) -> None:
            try:
                item = decode_item(text)
            except ValueError:
                return  # not JSON: nothing to validate, removed (as pop_item does)
            if validate is not None:
                validate(cast("InputItem", item))  # raising rolls back

        async def body(run: Runner, token: str) -> Popped | None:
            return await bound.ops.pop_checked(run, session_id, token, check)

        return await self._pop(bound, body)

    async def _pop(self, bound: writes.Bound, body: Any) -> InputItem | None:
        session_id = self.session_id
        while True:
            try:
                popped: Popped | None = await writes.shielded(
                    lambda: writes.run_write(bound, session_id, body), undo=self._put_back
                )
            except (WriteOutcomeUnknownError, PutBackFailedError) as exc:
                # Hand the caller the item itself, so it is not lost if the pop committed.
                if isinstance(exc.result, Popped):
                    exc.result = decode_item(exc.result.text)
                raise
            if popped is None:
                return None
            found = sdk_parity.decode_rows([popped.text], session_id, "removed")
            if found:
                return cast("InputItem", found[0])

    async def _put_back(self, popped: Popped) -> None:
        """Return a popped item to its old place (its caller was cancelled).

        Unless the session was cleared or deleted after the pop committed: a
        ``clear_session`` that came later would have removed the item too, so
        bringing it back would resurrect erased history. The write journal
        tells, exactly (:meth:`lattice.drivers.Operations.put_back`).
        """
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner, token: str) -> None:
            await bound.ops.put_back(run, session_id, popped, token)

        await writes.run_write(bound, session_id, body)

    # -- whole-history replacement and the SDK's compaction hooks (lattice.compaction)

    async def replace_items(self, items: InputItems) -> None:
        """Replace the whole history with ``items`` in one transaction.

        Readers see the old history or the new one, never a gap; a failure
        or a crash leaves the old one. For compacting history your own way.

        Raises:
            TypeError, ValueError: an item cannot be stored (as for ``add_items``).
        """
        await compaction.replace_all(self, items)

    async def _atomic_replace_items(self, items: list[InputItem]) -> bool:
        """The Agents SDK's hook: ``replace_items``; ``False`` for a subclass that
        changes how items are stored (it must replace them its own way)."""
        if not compaction.unchanged_behaviour(self, SQLAlchemySession):
            return False
        await compaction.replace_all(self, items)
        return True

    async def _get_compaction_snapshot(
        self, limit: int, *, prune_prefix: Callable[[InputItem], bool] | None = None
    ) -> Any:
        """The Agents SDK's hook for automatic compaction (see :mod:`lattice.compaction`)."""
        if not compaction.unchanged_behaviour(self, SQLAlchemySession):
            return None
        return await compaction.compaction_snapshot(self, limit, prune_prefix)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Remove every item of this session; other sessions are untouched."""
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner, token: str) -> None:
            await bound.ops.clear(run, session_id, token)

        await writes.shielded(lambda: writes.run_write(bound, session_id, body))
