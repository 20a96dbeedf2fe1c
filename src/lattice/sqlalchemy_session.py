"""``SQLAlchemySession``: a session stored in SQLite, PostgreSQL or MySQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import compaction, compat, engines, fastpath
from ._aio import outlast_cancellation
from .dialects import Statements, is_mysql, is_transient_conflict, statements
from .errors import WriteOutcomeUnknownError
from .fastpath import Runner, Step
from .items import DEFAULT_MAX_ITEM_BYTES, decode_item, encode_items
from .protocol import DefaultSettings, InputItem, InputItems, SessionABC
from .schema import (
    DEFAULT_MESSAGES_TABLE,
    DEFAULT_SESSIONS_TABLE,
    MAX_SESSION_ID_LENGTH,
    WRITE_TOKEN_LENGTH,
    LatticeTables,
    lattice_tables,
    utc_now,
)

if TYPE_CHECKING:
    from .protocol import SessionSettings

__all__ = ["SQLAlchemySession", "check_session_id"]

_T = TypeVar("_T")
_Bound = tuple[AsyncEngine, Statements, engines.EngineState]
_UNSET: Any = object()
# How often a transaction the server rolled back (deadlock, lock timeout) is rerun.
_CONFLICT_RETRIES = 5
# How often create_tables tries CREATE (more than the tables and indexes to make).
_CREATE_ATTEMPTS = 8
# The first character of a clear_session's write token. Other writes' tokens
# are random hex, so a put-back can tell from the ring whether a clear
# committed after the pop it undoes (see SQLAlchemySession._put_back).
_CLEAR_MARK = "x"


def _tokens(ring: str | None) -> list[str]:
    """The write tokens of a ``write_tokens`` ring, newest first."""
    ring, width = ring or "", WRITE_TOKEN_LENGTH
    return [ring[i : i + width] for i in range(0, len(ring), width)]


def check_session_id(session_id: Any) -> str:
    """Return ``session_id`` if it is a valid id, else raise naming the problem.

    A valid id is a ``str`` of 1 to 255 characters that can be encoded as
    UTF-8 and holds no NUL character (PostgreSQL cannot store one).
    """
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
    if not 1 <= len(session_id) <= MAX_SESSION_ID_LENGTH:
        raise ValueError(
            f"session_id must be 1 to {MAX_SESSION_ID_LENGTH} characters long, "
            f"not {len(session_id)}"
        )
    if "\x00" in session_id:
        raise ValueError("session_id must not contain a NUL character")
    if not session_id.isascii():
        try:
            session_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                "session_id is not valid Unicode (a lone surrogate at character "
                f"{exc.start}); it cannot be stored as UTF-8"
            ) from exc
    return session_id


async def _finish(task: asyncio.Future[_T]) -> _T:
    """Wait for ``task`` to end, whatever cancellations arrive meanwhile; its result."""
    await outlast_cancellation(task)
    return task.result()


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
    ) -> None:
        engines.check_engine(engine, "SQLAlchemySession")
        self._init(
            session_id,
            create_tables=create_tables,
            tables=lattice_tables(sessions_table, messages_table),
            session_settings=session_settings,
            max_item_bytes=max_item_bytes,
            ensure_ascii=ensure_ascii,
        )
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
        self._bound: tuple[AsyncEngine, Statements, engines.EngineState] | None = None

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

    async def _bind(self) -> tuple[AsyncEngine, Statements, engines.EngineState]:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        engine = self.engine
        bound = self._bound
        if bound is None or bound[0] is not engine:
            bound = (engine, statements(self._tables, engine.dialect), engines.engine_state(engine))
            self._bound = bound
        if self._create_tables and self._tables not in bound[2].created:
            await self._ensure_tables(engine, bound[2])
        return bound

    async def _ensure_tables(self, engine: AsyncEngine, state: engines.EngineState) -> None:
        async with state.create_lock():
            if self._tables in state.created:
                return
            async with state.exclusive():
                for attempt in range(_CREATE_ATTEMPTS):
                    try:
                        async with engine.begin() as conn:
                            await conn.run_sync(self._tables.metadata.create_all)
                        break
                    except (IntegrityError, ProgrammingError, OperationalError):
                        # Another process created a table or index between our
                        # check and CREATE (or held SQLite's write lock): check
                        # again. Each such failure means one more object exists,
                        # so a few rounds settle it (issue 13 #8: one retry was
                        # not enough with three or more processes starting at once).
                        if attempt == _CREATE_ATTEMPTS - 1:
                            raise
                        await asyncio.sleep(0.02 * (attempt + 1))
            state.created.add(self._tables)

    def _transaction(
        self, bound: _Bound, reading: bool = False, autocommit: bool = False
    ) -> AbstractAsyncContextManager[Runner]:
        """A connection in a transaction (or, ``reading``, for one read), committed at the end.

        On the driver fast path (:mod:`lattice.fastpath`) where the engine's
        driver has one, else through SQLAlchemy's ``AsyncConnection``.
        ``autocommit`` (fast path only): no transaction around the statements.
        """
        engine, _, state = bound
        driver = fastpath.driver_for(engine) if state.fast_path else None
        if driver is None:
            return self._sqlalchemy_transaction(bound, reading)
        if reading:
            return fastpath.reading(engine, state, driver, self._tables)
        return fastpath.transaction(engine, state, driver, self._tables, autocommit)

    @asynccontextmanager
    async def _sqlalchemy_transaction(self, bound: _Bound, reading: bool) -> AsyncIterator[Runner]:
        engine, stmts, state = bound
        if reading:
            async with engine.connect() as conn:
                if state.autocommit_reads:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield fastpath.SQLAlchemyRunner(conn, stmts)
        else:
            async with engine.begin() as conn:
                yield fastpath.SQLAlchemyRunner(conn, stmts)

    async def _max_packet(self, run: Runner, state: engines.EngineState) -> int:
        if state.max_packet is None:
            rows = await run.sql_rows("SELECT @@max_allowed_packet")
            state.max_packet = int(rows[0][0])
        return state.max_packet

    async def _mutate(
        self,
        operation: Callable[[], Awaitable[_T]],
        undo: Callable[[Any], Awaitable[None]] | None = None,
    ) -> _T:
        """Run a write so that cancelling the caller cannot leave it half done.

        The write runs in its own task. If the caller is cancelled, the write
        still runs to its end; then ``undo`` reverses a result the caller will
        never see (a popped item goes back), and the cancellation goes on.
        """
        task = asyncio.ensure_future(operation())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                result = await _finish(task)
            except Exception:
                raise asyncio.CancelledError() from None
            if undo is not None and result is not None:
                await _finish(asyncio.ensure_future(undo(result)))
            raise

    async def _write(
        self,
        body: Callable[[Runner, str], Awaitable[_T]],
        autocommit: bool = False,
        clearing: bool = False,
    ) -> _T:
        """Run ``body`` in one transaction, surviving conflicts and lost connections.

        ``body`` gets the connection and this attempt's write token, which its
        first statement records on the session row (``clearing``: a
        clear_session's token, marked as such). With ``autocommit`` (the
        fast path's one-statement append) ``body`` runs one statement that
        commits by itself, so a connection lost once it was sent is treated
        as a lost COMMIT reply.

        * A deadlock or lock timeout rolled back by the server: run again.
        * The connection lost before COMMIT was sent: nothing committed, run again once.
        * The connection lost after COMMIT was sent: ask the database, under the
          session's row lock, whether this attempt's token committed. If so,
          the write is done; if not, run again once; if the database cannot be
          asked, raise :class:`WriteOutcomeUnknownError`.
        """
        bound = await self._bind()
        state = bound[2]
        lost_connection_retries = 1
        conflicts = 0
        while True:
            # Random, like a uuid4's hex, without building a UUID object.
            token = os.urandom(WRITE_TOKEN_LENGTH // 2).hex()
            if clearing:
                token = _CLEAR_MARK + token[1:]
            result: Any = _UNSET
            attempt: Runner | None = None
            try:
                async with (
                    state.exclusive(),
                    state.writer(),
                    self._transaction(bound, autocommit=autocommit) as attempt,
                ):
                    result = await body(attempt, token)
                return result  # type: ignore[no-any-return]
            except DBAPIError as exc:
                if is_transient_conflict(exc) and conflicts < _CONFLICT_RETRIES:
                    conflicts += 1
                    await asyncio.sleep(0.005 * conflicts)
                    continue
                if not exc.connection_invalidated:
                    raise
                if result is _UNSET and attempt is not None and attempt.if_committed is not None:
                    # The body's last statement carried the COMMIT.
                    result = attempt.if_committed
                if result is not _UNSET or (attempt is not None and attempt.maybe_committed):
                    try:
                        committed = await self._token_committed(bound, token)
                    except Exception as check_exc:
                        # Any failure to ask, not only DBAPIError: a server that
                        # refuses connections makes asyncpg raise a bare
                        # ConnectionResetError/OSError, and a popped item must
                        # still reach its caller (tests/test_faults.py).
                        raise WriteOutcomeUnknownError(
                            f"the connection was lost while committing a write to session "
                            f"{self.session_id!r}, and the database could not be asked "
                            "whether it committed",
                            result=None if result is _UNSET else result,
                        ) from check_exc
                    if committed:
                        return result  # type: ignore[no-any-return]
                if lost_connection_retries == 0:
                    raise
                lost_connection_retries -= 1

    async def _token_committed(self, bound: _Bound, token: str) -> bool:
        # FOR UPDATE waits for a transaction still holding the row (one whose
        # client vanished but whose server side is finishing), so the answer
        # is final, not a race.
        async with bound[2].exclusive(), self._transaction(bound) as run:
            rows = await run.rows("read_tokens", {"sid": self.session_id})
        return bool(rows) and token in _tokens(rows[0][0])

    # -- the Session protocol --------------------------------------------------

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[InputItem]:
        """Return the latest ``limit`` items, oldest first.

        ``wrapper`` (the Agents SDK's run context, passed by its Runner) is
        accepted and not used; see :class:`lattice.routing.RoutedSession`.

        ``limit=None`` falls back to ``session_settings.limit``, then to the
        whole history; a limit of 0 or less returns ``[]``.
        """
        limit = self._limit(limit)
        if limit is not None and limit <= 0:
            return []
        bound = await self._bind()
        state = bound[2]
        for attempt in (1, 2):
            try:
                async with state.exclusive(), self._transaction(bound, reading=True) as run:
                    if limit is None:
                        rows = await run.rows("select_all", {"sid": self.session_id})
                        items = compat.decode_rows([r[0] for r in rows], self.session_id)
                        return cast("list[InputItem]", items)
                    # A row that is not JSON is skipped, and the limit counts
                    # readable items (as the SDK's does): widen the window.
                    window = limit
                    while True:
                        params = {"sid": self.session_id, "lim": window}
                        rows = await run.rows("select_latest", params)
                        texts = [row[0] for row in reversed(rows)]
                        items = compat.decode_rows(texts, self.session_id)
                        if len(items) >= limit or len(rows) < window:
                            return cast("list[InputItem]", items[-limit:])
                        window *= 2
            except DBAPIError as exc:
                # A connection that died while idle in the pool (server restart):
                # the pool is already invalidated, so one more try reconnects.
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

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
            texts = compat.ascii_texts(items)
        session_id = self.session_id
        engine, _, state = await self._bind()
        mysql = is_mysql(engine.dialect)
        # PostgreSQL on the fast path: the whole append is one statement in
        # autocommit (fastpath.APPEND; why it is safe is written there).
        in_one = state.fast_path and fastpath.has_append_in_one(engine)

        async def body(run: Runner, token: str) -> None:
            now = utc_now()
            head = {"sid": session_id, "now": now, "n": len(texts), "token": token}
            if in_one:
                await run.count(fastpath.APPEND, {**head, "texts": texts})
                return
            if mysql:
                await self._check_packet(run, texts)
            rows = [{"sid": session_id, "data": text, "now": now} for text in texts]
            await run.steps(
                [Step("count", "upsert_session", head), Step("many", "insert_message", rows)]
            )

        await self._mutate(lambda: self._write(body, autocommit=in_one))

    async def _check_packet(self, run: Runner, texts: list[str]) -> None:
        _, _, state = await self._bind()
        limit = await self._max_packet(run, state)
        for index, text in enumerate(texts):
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
            # The statement around the item needs a little room of its own.
            if 2 * size + 1024 <= limit:
                continue
            # aiomysql sends the item as an escaped string literal: each \, " and '
            # takes two bytes. A 12 MB item of quotes is 24 MB on the wire, and a
            # server that gets more than max_allowed_packet drops the connection
            # (tests/test_hostile.py), so count what is really sent.
            size += text.count("\\") + text.count('"') + text.count("'")
            if size + 1024 > limit:
                raise ValueError(
                    f"item {index} is {size} bytes of escaped JSON, more than this MySQL server "
                    f"accepts in one statement (max_allowed_packet = {limit}); raise "
                    "max_allowed_packet on the server or store smaller items"
                )

    async def pop_item(self, *, wrapper: Any = None) -> InputItem | None:
        """Remove and return the newest item, or ``None`` if there is none.

        Each item goes to exactly one caller. If this call is cancelled after
        the database removed the item, the item is put back where it was.
        """
        session_id = self.session_id
        engine, stmts, state = await self._bind()
        one_statement = stmts.delete_newest_returning is not None
        # PostgreSQL on the fast path: lock and delete in one statement (fastpath.POP).
        in_one = state.fast_path and fastpath.has_pop_in_one(engine)

        async def body(run: Runner, token: str) -> tuple[int, str, str] | None:
            sid = {"sid": session_id}
            if in_one:
                params = {"sid": session_id, "now": utc_now(), "token": token}
                locked, fresh, mid, data = (await run.rows(fastpath.POP, params))[0]
                if not locked:
                    return None
                if not fresh:
                    # A writer committed between the statement's snapshot and its lock.
                    rows = await run.rows("delete_newest_returning", sid)
                    mid, data = rows[0] if rows else (None, None)
                if mid is None:
                    # Nothing to pop: undo the count decrement taken with the lock.
                    await run.rollback()
                    return None
                return int(mid), data, token
            lock = Step(
                "count",
                "lock_session_pop",
                {"sid": session_id, "now": utc_now(), "token": token},
                stop_if_empty=True,
            )
            # Nothing to pop rolls back, undoing the count decrement taken with the lock.
            if one_statement:
                done = await run.steps([lock, Step("rows", "delete_newest_returning", sid, True)])
                rows = done[-1] if len(done) == 2 else []
            else:
                # MySQL: the lock and the SELECT as one batch, then the DELETE
                # and COMMIT as another (aiomysql: two round trips, not four).
                # The item is in hand before COMMIT is sent, and becomes the
                # result should the reply to that COMMIT be lost.
                locked, rows = await run.steps(
                    [replace(lock, stop_if_empty=False), Step("rows", "select_newest", sid)],
                    commit=False,
                )
                if not rows:
                    if locked:
                        await run.rollback()
                    return None
                run.if_committed = int(rows[0][0]), rows[0][1], token
                await run.steps([Step("count", "delete_by_id", {"mid": rows[0][0]})])
                return run.if_committed  # type: ignore[no-any-return]
            if not rows:
                return None
            return int(rows[0][0]), rows[0][1], token

        while True:
            try:
                popped: tuple[int, str, str] | None = await self._mutate(
                    lambda: self._write(body), undo=self._put_back
                )
            except WriteOutcomeUnknownError as exc:
                # Hand the caller the item itself, so it is not lost if the pop committed.
                if isinstance(exc.result, tuple):
                    exc.result = decode_item(exc.result[1])
                raise
            if popped is None:
                return None
            found = compat.decode_rows([popped[1]], self.session_id, "removed")
            if found:
                return cast("InputItem", found[0])
            # A row that is not JSON (another program wrote it): removed, and
            # the next item is popped instead, as the SDK's pop does (issue 13 #9).

    async def _pop_item_with_validation(
        self, validate: Callable[[InputItem], None] | None = None
    ) -> InputItem | None:
        """``pop_item``, with ``validate(item)`` run before the removal commits.

        The Agents SDK's optional hook (its ``EncryptedSession`` authenticates
        the ciphertext this way). If ``validate`` raises, the transaction rolls
        back: the item keeps its place and id, and the exception propagates.
        It takes the generic route of a pop (lock the session row, read the
        newest item, validate, delete, commit) on every backend, rather than
        the one-statement pops of ``pop_item``, as the item must be seen
        before it is deleted.
        """
        session_id = self.session_id

        async def body(run: Runner, token: str) -> tuple[int, str, str] | None:
            sid = {"sid": session_id}
            lock = Step("count", "lock_session_pop", {**sid, "now": utc_now(), "token": token})
            locked, rows = await run.steps([lock, Step("rows", "select_newest", sid)], commit=False)
            if not rows:
                if locked:
                    await run.rollback()  # undo the count decrement taken with the lock
                return None
            mid, data = int(rows[0][0]), rows[0][1]
            try:
                item = decode_item(data)
            except ValueError:
                item = None  # not JSON: nothing to validate, removed (below)
            if validate is not None and item is not None:
                validate(cast("InputItem", item))  # raising rolls back
            run.if_committed = mid, data, token
            await run.steps([Step("count", "delete_by_id", {"mid": mid})])
            return mid, data, token

        while True:
            popped: tuple[int, str, str] | None = await self._mutate(
                lambda: self._write(body), undo=self._put_back
            )
            if popped is None:
                return None
            found = compat.decode_rows([popped[1]], self.session_id, "removed")
            if found:
                return cast("InputItem", found[0])

    async def _put_back(self, popped: tuple[int, str, str]) -> None:
        """Return a popped item to its old place (its caller was cancelled).

        Unless the session was cleared or deleted after the pop committed: a
        ``clear_session`` that came later would have removed the item too, so
        bringing it back would resurrect cleared history. The session row's
        token ring tells: a clear's token newer than the pop's, or no row.
        """
        message_id, text, pop_token = popped
        session_id = self.session_id

        async def body(run: Runner, token: str) -> None:
            now = utc_now()
            # The upsert first: it takes the session's lock (on SQLite, the
            # write lock) before the ring is read, so no clear can slip between.
            await run.count(
                "upsert_session", {"sid": session_id, "now": now, "n": 1, "token": token}
            )
            ring = await run.rows("read_tokens", {"sid": session_id})
            since = _tokens(ring[0][0])[1:]  # newest first, without this write's own
            if pop_token in since:
                since = since[: since.index(pop_token)]
            elif not since:
                # No row before the upsert made one: the session was deleted.
                await run.rollback()
                return
            # (The pop's token gone from a non-empty ring: eight writes since,
            # or a replaced session. Not knowing, the item goes back.)
            if any(t.startswith(_CLEAR_MARK) for t in since):
                await run.rollback()
                return
            await run.count(
                "insert_message_with_id",
                {"mid": message_id, "sid": session_id, "data": text, "now": now},
            )

        await self._write(body)

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
        if not compaction.unchanged_behaviour(self):
            return False
        await compaction.replace_all(self, items)
        return True

    async def _get_compaction_snapshot(
        self, limit: int, *, prune_prefix: Callable[[InputItem], bool] | None = None
    ) -> Any:
        """The Agents SDK's hook for automatic compaction (see :mod:`lattice.compaction`)."""
        if not compaction.unchanged_behaviour(self):
            return None
        return await compaction.compaction_snapshot(self, limit, prune_prefix)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Remove every item of this session; other sessions are untouched."""
        session_id = self.session_id

        async def body(run: Runner, token: str) -> None:
            params = {"sid": session_id, "now": utc_now(), "token": token}
            await run.steps(
                [
                    Step("count", "lock_session_clear", params, stop_if_empty=True),
                    Step("count", "delete_all", {"sid": session_id}),
                ]
            )

        await self._mutate(lambda: self._write(body, clearing=True))
