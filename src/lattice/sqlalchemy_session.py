"""``SQLAlchemySession``: a session stored in SQLite, PostgreSQL or MySQL.

The session validates, then asks its engine's operations
(:mod:`lattice.drivers`) to run inside the write protocol
(:mod:`lattice.writes`); it knows nothing of dialects or drivers.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from . import dialects, drivers, engines, writes
from .drivers import Operations, Popped, Runner
from .errors import PutBackFailedError, WriteOutcomeUnknownError
from .items import DEFAULT_MAX_ITEM_BYTES, check_session_id, decode_item, encode_items
from .protocol import SessionABC, SessionSettings, coerce_settings, resolve_limit
from .schema import (
    DEFAULT_MESSAGES_TABLE,
    DEFAULT_SESSIONS_TABLE,
    LatticeTables,
    lattice_tables,
)

__all__ = ["SQLAlchemySession"]


def bind(engine: AsyncEngine, tables: LatticeTables) -> writes.Bound:
    """The engine as sessions on ``tables`` run on it: state, driver and operations."""
    state = engines.engine_state(engine)
    driver = drivers.driver_for(engine, state)
    ops = Operations(driver, dialects.rules(engine.dialect), state)
    return writes.Bound(engine, state, driver, ops, tables)


class SQLAlchemySession(SessionABC):
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
        max_item_bytes: Largest accepted item, in bytes of UTF-8 JSON.
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        *,
        engine: AsyncEngine,
        create_tables: bool = False,
        sessions_table: str = DEFAULT_SESSIONS_TABLE,
        messages_table: str = DEFAULT_MESSAGES_TABLE,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        engines.check_engine(engine, "SQLAlchemySession")
        self._init(
            session_id,
            create_tables=create_tables,
            tables=lattice_tables(sessions_table, messages_table),
            session_settings=session_settings,
            max_item_bytes=max_item_bytes,
        )
        self._fixed_engine: AsyncEngine | None = engine
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
    ) -> None:
        self.session_id = check_session_id(session_id)
        self.session_settings = coerce_settings(session_settings)
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
            return cls(session_id, engine=engines.make_engine(parsed, **options), **kwargs)
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
        )
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        self._fixed_engine = None
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

    # -- plumbing ------------------------------------------------------------

    async def _bind(self) -> writes.Bound:
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

    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the latest ``limit`` items, oldest first.

        ``limit=None`` falls back to ``session_settings.limit``, then to the
        whole history; a limit of 0 or less returns ``[]``.
        """
        limit = resolve_limit(limit, self.session_settings)
        if limit is not None and limit <= 0:
            return []
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner) -> list[str]:
            return await bound.ops.read(run, session_id, limit)

        return [decode_item(text) for text in await writes.read(bound, body)]

    async def add_items(self, items: list[dict[str, Any]]) -> None:
        """Append ``items`` as one batch: all are stored, contiguous, or none.

        Raises:
            TypeError: an item is not a dict or holds a non-JSON value.
            ValueError: an item holds NaN/Infinity or invalid text, or is too large.
        """
        texts = encode_items(items, self._max_item_bytes)
        if not texts:
            return
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner, token: str) -> None:
            await bound.ops.append(run, session_id, texts, token)

        await writes.shielded(
            lambda: writes.run_write(
                bound, session_id, body, autocommit=bound.ops.append_autocommits
            )
        )

    async def pop_item(self) -> dict[str, Any] | None:
        """Remove and return the newest item, or ``None`` if there is none.

        Each item goes to exactly one caller. If this call is cancelled after
        the database removed the item, the item is put back where it was.
        """
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner, token: str) -> Popped | None:
            return await bound.ops.pop(run, session_id, token)

        try:
            popped: Popped | None = await writes.shielded(
                lambda: writes.run_write(bound, session_id, body), undo=self._put_back
            )
        except (WriteOutcomeUnknownError, PutBackFailedError) as exc:
            # Hand the caller the item itself, so it is not lost if the pop committed.
            if isinstance(exc.result, Popped):
                exc.result = decode_item(exc.result.text)
            raise
        return None if popped is None else decode_item(popped.text)

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

    async def clear_session(self) -> None:
        """Remove every item of this session; other sessions are untouched."""
        bound = await self._bind()
        session_id = self.session_id

        async def body(run: Runner, token: str) -> None:
            await bound.ops.clear(run, session_id, token)

        await writes.shielded(lambda: writes.run_write(bound, session_id, body))
