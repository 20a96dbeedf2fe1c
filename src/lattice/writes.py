"""The write protocol every session and the store follow: shielding, retries, exact outcomes.

One module so there is one answer to each of these questions:

* **Cancellation.** A write that has started runs to its end in a task of
  its own (:func:`shielded`), or the caller could be told "cancelled" while
  the database commits; a result the caller will never see is undone (a
  popped item goes back), then the cancellation goes on.
* **Conflicts.** A transaction the server rolled back (deadlock,
  serialization failure, a Galera certification failure reported at
  COMMIT: :func:`lattice.dialects.is_transient_conflict`) runs again, after
  a growing, jittered pause (:func:`backoff`), for up to
  :data:`CONFLICT_RETRY_S` seconds; then the conflict is raised. Writers of
  one session through different Galera nodes conflict on every overlap
  (certification is optimistic: nobody waits for a row lock), so a fixed
  small number of retries was not enough there. A lock wait that outlasted
  the engine's lock timeout is not run again: it raises
  :class:`~lattice.errors.LockTimeoutError` (:func:`check_lock_timeout`).
* **Lost connections.** Lost before COMMIT was sent: nothing committed, so
  it runs again once. Lost after: the database is asked, under the session's
  row lock, whether this attempt's write token committed (:func:`run_write`).
  The answer comes from the write journal, a row every write adds in its own
  transaction and that is kept for :data:`JOURNAL_WINDOW_S`: however many
  writes follow, the row is there until the window has passed, so the
  answer is exact. Lattice trusts a missing row only within
  :data:`JOURNAL_TRUST_S` of the write's start; past it, or when the
  database cannot be asked, :class:`~lattice.errors.WriteOutcomeUnknownError`
  carries what the write had produced rather than a guess. A database that
  cannot be reached is asked again for up to :data:`OUTCOME_WAIT_S` (a
  failover: the standby is being promoted, and the journal on the new
  primary answers, since a synchronous standby has every acknowledged commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from .dialects import is_lock_timeout, is_transient_conflict, schema_problem
from .drivers import Driver, Operations, Runner
from .engines import EngineState
from .errors import (
    LockTimeoutError,
    PutBackFailedError,
    SchemaNotReadyError,
    WriteOutcomeUnknownError,
)
from .schema import WRITE_TOKEN_LENGTH, LatticeTables

__all__ = [
    "CONFLICT_RETRY_S",
    "JOURNAL_TRUST_S",
    "JOURNAL_WINDOW_S",
    "OUTCOME_WAIT_S",
    "Bound",
    "backoff",
    "check_lock_timeout",
    "check_schema",
    "finish",
    "new_token",
    "outlast_cancellation",
    "prune_journal",
    "read",
    "retry_conflicts",
    "run_write",
    "schema_advice",
    "shielded",
]

_T = TypeVar("_T")
_UNSET: Any = object()
_log = logging.getLogger("lattice.writes")

#: How long one call reruns transactions the server rolled back (deadlock,
#: certification failure) before it raises the conflict.
CONFLICT_RETRY_S = 30.0
#: How often ``retry_conflicts(also=...)`` reruns what ``also`` accepts.
_WIDENED_RETRIES = 5
#: The longest pause between two reruns (before jitter).
_MAX_BACKOFF_S = 0.2
#: How long the write journal keeps a row (by the database server's clock).
JOURNAL_WINDOW_S = 3600
#: How long after a write began its outcome is answered from the journal. The
#: margin to the window covers a long wait for the database and clocks of the
#: database servers of one cluster that disagree.
JOURNAL_TRUST_S = 600
#: Every this many writes on an engine, one prunes the journal (the first one too).
JOURNAL_PRUNE_EVERY = 512
#: How long a lost write's outcome is asked for while the database cannot be
#: reached (a restart, a failover to a standby) before WriteOutcomeUnknownError.
OUTCOME_WAIT_S = 10.0


def backoff(attempt: int) -> float:
    """Seconds to wait before conflict retry number ``attempt`` (1, 2, ...).

    Doubling from 5 ms up to 200 ms, times a random factor in [0.5, 1.5) so
    that writers who collided do not collide again in step.
    """
    pause: float = min(0.005 * 2.0 ** min(attempt - 1, 16), _MAX_BACKOFF_S)
    return pause * (0.5 + random.random())


class _Conflicts:
    """One call's budget of conflict reruns: :data:`CONFLICT_RETRY_S` from the first."""

    __slots__ = ("count", "deadline")

    def __init__(self) -> None:
        self.count = 0
        self.deadline: float | None = None

    async def rerun(self, exc: DBAPIError) -> bool:
        """Wait before the next attempt and return True, or False when the budget is spent."""
        if not is_transient_conflict(exc):
            return False
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + CONFLICT_RETRY_S
        pause = backoff(self.count + 1)
        if now + pause > self.deadline:
            return False
        self.count += 1
        await asyncio.sleep(pause)
        return True


def new_token() -> str:
    """A fresh write token: random hex, like a uuid4's, without building a UUID."""
    return os.urandom(WRITE_TOKEN_LENGTH // 2).hex()


@dataclass(frozen=True)
class Bound:
    """A session's engine as it runs: the engine, its state, driver and operations."""

    engine: AsyncEngine
    state: EngineState
    driver: Driver
    ops: Operations
    tables: LatticeTables


# -- cancellation ------------------------------------------------------------------


async def outlast_cancellation(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, whatever cancellations of the waiter arrive meanwhile.

    The cancellation is re-raised by the caller afterwards.
    """
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            continue


async def finish(task: asyncio.Future[_T]) -> _T:
    """Wait for ``task`` to end, whatever cancellations arrive meanwhile; its result."""
    await outlast_cancellation(task)
    return task.result()


class _WriteTask(asyncio.Task):  # type: ignore[type-arg]
    """A task that refuses cancellation: a write that has started runs to its end.

    Awaited directly by its caller. Cancelling the caller then asks this
    task to cancel, which it refuses; asyncio then delivers the
    cancellation to the caller once this task is done (``Task.cancel``: the
    awaited future would not cancel, so the cancellation waits for the
    caller's next step), with the task's outcome at hand. One event-loop
    iteration less per write than ``asyncio.shield`` (whose outer future
    is resolved by a callback of its own), and the same guarantee.
    """

    def cancel(self, msg: Any = None) -> bool:
        return False


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _start(awaitable: Awaitable[_T]) -> asyncio.Task[_T]:
    """``awaitable`` running in a :class:`_WriteTask`."""
    coro = awaitable if asyncio.iscoroutine(awaitable) else _await(awaitable)
    task: asyncio.Task[_T] = _WriteTask(coro, loop=asyncio.get_running_loop())
    return task


async def shielded(
    operation: Callable[[], Awaitable[_T]],
    undo: Callable[[Any], Awaitable[None]] | None = None,
) -> _T:
    """Run a write so that cancelling the caller cannot leave it half done.

    The write runs in its own task, which refuses cancellation. If the
    caller is cancelled, the write still runs to its end; then ``undo``
    reverses a result the caller will never see (a popped item goes back),
    and the cancellation goes on.

    If that outcome cannot be delivered as a cancellation without losing
    something, an error carrying it is raised instead: the write's own
    :class:`WriteOutcomeUnknownError`, or :class:`PutBackFailedError` when
    the undo failed (both hold the popped item in ``result``).
    """
    task = _start(operation())
    try:
        return await task
    except asyncio.CancelledError as cancelled:
        if not task.done():
            # Not the write's own cancellation: the caller's, arrived while
            # the task was being awaited for the first time. Wait it out.
            await outlast_cancellation(task)
        if task.cancelled():
            raise
        try:
            result = task.result()
        except WriteOutcomeUnknownError:
            raise
        except Exception:
            raise asyncio.CancelledError() from None
        if undo is not None and result is not None:
            try:
                await finish(_start(undo(result)))
            except Exception as exc:
                raise PutBackFailedError(
                    "pop_item was cancelled after it removed its item, and putting the item "
                    f"back failed ({type(exc).__name__}: {exc}); the item is in .item",
                    result=result,
                ) from exc
        raise cancelled


# -- retries -------------------------------------------------------------------------


async def retry_conflicts(
    attempt: Callable[[], Awaitable[_T]], *, also: Callable[[DBAPIError], bool] | None = None
) -> _T:
    """Run ``attempt()`` again when the server rolled its transaction back.

    ``also`` widens what counts as a conflict (the store retries a concurrent
    creation of the same row, an ``IntegrityError``).
    """
    conflicts = _Conflicts()
    widened = 0
    while True:
        try:
            return await attempt()
        except DBAPIError as exc:
            check_lock_timeout(exc, "the sessions")
            check_schema(exc)
            if also is not None and also(exc) and widened < _WIDENED_RETRIES:
                widened += 1
                await asyncio.sleep(backoff(widened))
                continue
            if not await conflicts.rerun(exc):
                raise


def check_lock_timeout(exc: DBAPIError, what: str) -> None:
    """Raise :class:`LockTimeoutError` if ``exc`` is the server giving up on a lock wait.

    Not retried: a rerun would wait the whole timeout again. Nothing of the
    write committed (the statement that waited did nothing, and the
    transaction is rolled back on the way out).
    """
    if is_lock_timeout(exc):
        raise LockTimeoutError(
            f"{what} stayed locked by another transaction for longer than the lock timeout; "
            "nothing was written (lattice.engines.limit_lock_waits sets the bound)"
        ) from exc


def schema_advice(exc: DBAPIError) -> str | None:
    """What to do when ``exc`` says a table or column is not there (else None)."""
    problem = schema_problem(exc)
    if problem is None:
        return None
    reason = str(exc.orig or exc).strip().splitlines()[0]
    if problem == "missing":
        return (
            f"{reason}; Lattice's tables are not in this database: create them with "
            "`lattice db upgrade` (or `await lattice.migrations.upgrade(url)`), "
            "or pass create_tables=True"
        )
    return f"{reason}; the tables are older than this Lattice: run `lattice db upgrade`"


def check_schema(exc: DBAPIError) -> None:
    """Raise :class:`SchemaNotReadyError` if ``exc`` says a table or column is not there."""
    advice = schema_advice(exc)
    if advice is not None:
        raise SchemaNotReadyError(advice) from exc


async def read(bound: Bound, body: Callable[[Runner], Awaitable[_T]]) -> _T:
    """Run a read, once more if its pooled connection had died while idle."""
    state = bound.state
    for attempt in (1, 2):
        try:
            async with (
                state.exclusive(),
                bound.driver.reading(bound.engine, state, bound.tables) as run,
            ):
                return await body(run)
        except DBAPIError as exc:
            # A connection that died while idle in the pool (server restart):
            # the pool is already invalidated, so one more try reconnects.
            check_schema(exc)
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


async def run_write(
    bound: Bound,
    session_id: str,
    body: Callable[[Runner, str], Awaitable[_T]],
    *,
    autocommit: bool = False,
) -> _T:
    """Run ``body`` in one transaction, surviving conflicts and lost connections.

    ``body`` gets the connection and this attempt's write token, which it
    records on the session row and in the journal. With ``autocommit`` (a
    driver's one-statement append) ``body`` runs one statement that commits
    by itself, so a connection lost once it was sent is treated as a lost
    COMMIT reply.

    * A deadlock or certification failure rolled back by the server: run
      again (for :data:`CONFLICT_RETRY_S` at most).
    * A lock wait past the lock timeout: :class:`LockTimeoutError`, nothing written.
    * The connection lost before COMMIT was sent: nothing committed, run again once.
    * The connection lost after COMMIT was sent: ask the database, under the
      session's row lock, whether this attempt's token committed. If so, the
      write is done; if not, run again once; if the database cannot be
      asked, raise :class:`WriteOutcomeUnknownError`.
    """
    state = bound.state
    lost_connection_retries = 1
    conflicts = _Conflicts()
    while True:
        started = time.monotonic()
        token = new_token()
        result: Any = _UNSET
        attempt: Runner | None = None
        try:
            async with (
                state.exclusive(),
                state.writer(),
                bound.driver.transaction(bound.engine, state, bound.tables, autocommit) as attempt,
            ):
                result = await body(attempt, token)
            await _maybe_prune(bound)
            return result  # type: ignore[no-any-return]
        except DBAPIError as exc:
            check_lock_timeout(exc, f"session {session_id!r}")
            check_schema(exc)
            if await conflicts.rerun(exc):
                continue
            if not exc.connection_invalidated:
                raise
            if result is _UNSET and attempt is not None and attempt.if_committed is not None:
                # The body's last statement carried the COMMIT.
                result = attempt.if_committed
            if result is not _UNSET or (attempt is not None and attempt.maybe_committed):
                try:
                    committed = await _ask_outcome(bound, session_id, token)
                    if not committed and time.monotonic() - started > JOURNAL_TRUST_S:
                        raise LookupError(
                            f"the write began over {JOURNAL_TRUST_S} s ago: the journal "
                            "may have been pruned of its row"
                        )
                except Exception as check_exc:
                    # Any failure to ask, not only DBAPIError: a server that
                    # refuses connections makes asyncpg raise a bare
                    # ConnectionResetError/OSError, and a popped item must
                    # still reach its caller (tests/test_faults.py).
                    raise WriteOutcomeUnknownError(
                        f"the connection was lost while committing a write to session "
                        f"{session_id!r}, and the database could not be asked "
                        "whether it committed",
                        result=None if result is _UNSET else result,
                    ) from check_exc
                if committed:
                    return result  # type: ignore[no-any-return]
            if lost_connection_retries == 0:
                raise
            lost_connection_retries -= 1


async def _ask_outcome(bound: Bound, session_id: str, token: str) -> bool:
    """:func:`token_committed`, asked again while it fails, for up to :data:`OUTCOME_WAIT_S`.

    Any failure, not only a refused connection: during a failover the old
    primary resets connections, the standby answers "read-only" or "shutting
    down" until it is promoted, and asyncpg raises plain ``OSError`` for some
    of these. The last failure is raised once the time is up.
    """
    deadline = time.monotonic() + OUTCOME_WAIT_S
    pause = 0.05
    while True:
        try:
            return await token_committed(bound, session_id, token)
        except Exception:
            if time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


async def token_committed(bound: Bound, session_id: str, token: str) -> bool:
    """Whether the write that carried ``token`` committed (the journal, under the row lock)."""
    async with (
        bound.state.exclusive(),
        bound.driver.transaction(bound.engine, bound.state, bound.tables) as run,
    ):
        return await bound.ops.committed(run, session_id, token)


async def _maybe_prune(bound: Bound) -> None:
    """Prune the journal on the first write of an engine and every JOURNAL_PRUNE_EVERY after."""
    state = bound.state
    state.writes += 1
    if state.writes % JOURNAL_PRUNE_EVERY != 1:
        return
    try:
        await prune_journal(bound)
    except Exception:  # the write succeeded; pruning is retried on a later write
        _log.warning("could not prune the write journal", exc_info=True)


async def prune_journal(bound: Bound) -> int:
    """Delete the journal rows older than :data:`JOURNAL_WINDOW_S`; how many went."""
    async with (
        bound.state.exclusive(),
        bound.state.writer(),
        bound.driver.transaction(bound.engine, bound.state, bound.tables) as run,
    ):
        return await bound.ops.prune_journal(run, JOURNAL_WINDOW_S * 1000)
