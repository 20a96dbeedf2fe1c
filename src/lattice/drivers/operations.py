"""A session's operations, each in the best shape its driver has.

:class:`Operations` is what :class:`lattice.SQLAlchemySession` calls: one per
(engine, tables), made by :func:`lattice.drivers.operations_for`. Each
method runs inside one transaction the write protocol (:mod:`lattice.writes`)
opened, and branches on the driver's *capabilities*, never on its name:

* the general shape sends one statement at a time;
* ``runs_plans`` sends a transaction's statements (and COMMIT) together;
* ``append_in_one_statement`` / ``pop_in_one_statement`` use the driver's
  own one-statement forms (their safety argument is written beside them, in
  :mod:`lattice.drivers.asyncpg`).

Every mutation starts by writing the session's row, which takes its row lock
(SQLite: the database's write lock), so writers of one session run one after
another on every backend (see :mod:`lattice.dialects`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import dialects
from ..engines import EngineState
from ..schema import JOURNAL_CLEAR, JOURNAL_WRITE, utc_now
from .base import Driver, Runner, Step, StepKind, Stmt

__all__ = ["Operations", "Popped"]


@dataclass(frozen=True)
class Popped:
    """What a pop removed: the row's id (to put it back), its text, and the pop's token."""

    message_id: int
    text: str
    token: str


@dataclass(frozen=True)
class Operations:
    """The operations of sessions on one engine and pair of tables."""

    driver: Driver
    rules: dialects.Rules
    state: EngineState

    @property
    def append_autocommits(self) -> bool:
        """True when an append is one statement that commits by itself (no BEGIN)."""
        return self.driver.append_in_one_statement

    async def max_packet(self, run: Runner) -> int:
        """MySQL's ``max_allowed_packet`` (asked once per engine)."""
        return await self._max_packet(run)

    async def _max_packet(self, run: Runner) -> int:
        if self.state.max_packet is None:
            rows = await run.sql_rows("SELECT @@max_allowed_packet")
            self.state.max_packet = int(rows[0][0])
        return self.state.max_packet

    async def read(self, run: Runner, session_id: str, limit: int | None) -> list[str]:
        """The stored texts of the latest ``limit`` items (all when ``None``), oldest first."""
        if limit is None:
            rows = await run.rows(Stmt.SELECT_ALL, {"sid": session_id})
            return [row[0] for row in rows]
        rows = await run.rows(Stmt.SELECT_LATEST, {"sid": session_id, "lim": limit})
        return [row[0] for row in reversed(rows)]

    async def append(self, run: Runner, session_id: str, texts: list[str], token: str) -> None:
        """Upsert the session row (count, token), then insert the items in order."""
        now = utc_now()
        head = {"sid": session_id, "now": now, "n": len(texts), "token": token}
        if self.driver.append_in_one_statement:
            await run.count(Stmt.APPEND, {**head, "texts": texts})
            return
        if self.rules.packet_limited:
            dialects.check_packet(texts, await self._max_packet(run))
        rows = [{"sid": session_id, "data": text, "now": now} for text in texts]
        await run.steps(
            [
                Step(StepKind.COUNT, Stmt.UPSERT_SESSION, head),
                _journal(session_id, token, JOURNAL_WRITE),
                Step(StepKind.MANY, Stmt.INSERT_MESSAGE, rows),
            ]
        )

    async def pop(self, run: Runner, session_id: str, token: str) -> Popped | None:
        """Lock the session row (count - 1, token), then remove its newest item.

        Nothing to pop rolls back, undoing the count decrement taken with the lock.
        """
        sid = {"sid": session_id}
        lock_params = {"sid": session_id, "now": utc_now(), "token": token}
        if self.driver.pop_in_one_statement:
            locked, fresh, mid, data = (await run.rows(Stmt.POP, lock_params))[0]
            if not locked:
                return None
            if not fresh:
                # A writer committed between the statement's snapshot and its lock.
                rows = await run.rows(Stmt.DELETE_NEWEST_RETURNING, sid)
                mid, data = rows[0] if rows else (None, None)
            if mid is None:
                await run.rollback()
                return None
            return Popped(int(mid), data, token)
        lock = Step(StepKind.COUNT, Stmt.LOCK_SESSION_POP, lock_params, stop_if_empty=True)
        journal = _journal(session_id, token, JOURNAL_WRITE)
        if self.rules.delete_returning:
            delete = Step(StepKind.ROWS, Stmt.DELETE_NEWEST_RETURNING, sid, True)
            done = await run.steps([lock, journal, delete])
            gone: Sequence[Sequence[Any]] = done[-1] if len(done) == 3 else []
            return Popped(int(gone[0][0]), gone[0][1], token) if gone else None
        # No DELETE ... RETURNING (MySQL): the lock and the SELECT as one batch,
        # then the DELETE and COMMIT as another (two round trips where the
        # driver runs plans). The item is in hand before COMMIT is sent, and
        # becomes the result should the reply to that COMMIT be lost.
        return await self.pop_checked(run, session_id, token, _accept)

    async def pop_checked(
        self, run: Runner, session_id: str, token: str, check: Callable[[str], None]
    ) -> Popped | None:
        """A pop that runs ``check(text)`` on the item before deleting it (may raise).

        The general shape on every driver: lock and read the newest item, check
        it, then delete it and commit. ``check`` raising rolls back.
        """
        sid = {"sid": session_id}
        lock_params = {"sid": session_id, "now": utc_now(), "token": token}
        locked, _, rows = await run.steps(
            [
                Step(StepKind.COUNT, Stmt.LOCK_SESSION_POP, lock_params),
                _journal(session_id, token, JOURNAL_WRITE),
                Step(StepKind.ROWS, Stmt.SELECT_NEWEST, sid),
            ],
            commit=False,
        )
        if not rows:
            if locked:
                await run.rollback()
            return None
        popped = Popped(int(rows[0][0]), rows[0][1], token)
        check(popped.text)
        run.if_committed = popped
        await run.steps(
            [Step(StepKind.COUNT, Stmt.DELETE_BY_ID, {"sid": session_id, "mid": popped.message_id})]
        )
        return popped

    async def clear(self, run: Runner, session_id: str, token: str) -> None:
        """Lock the session row (count 0, token), then delete its items."""
        params = {"sid": session_id, "now": utc_now(), "token": token}
        await run.steps(
            [
                Step(StepKind.COUNT, Stmt.LOCK_SESSION_CLEAR, params, stop_if_empty=True),
                _journal(session_id, token, JOURNAL_CLEAR),
                Step(StepKind.COUNT, Stmt.DELETE_ALL, {"sid": session_id}),
            ]
        )

    async def put_back(self, run: Runner, session_id: str, popped: Popped, token: str) -> bool:
        """Insert a popped item again under its old id, unless its session was erased since.

        The upsert first: it takes the session's lock (on SQLite, the write
        lock) before the journal is read, so no clear can slip between. The
        journal then says whether a clear or a delete of the session
        committed after the pop (later ``seq``): then the item stays out, as
        that clear would have removed it too. False when it stayed out.

        Raises:
            LookupError: the pop's journal row is gone (older than the
                journal's window): nothing can prove the session unchanged.
        """
        now = utc_now()
        await run.count(
            Stmt.UPSERT_SESSION, {"sid": session_id, "now": now, "n": 1, "token": token}
        )
        seq = await run.rows(Stmt.JOURNAL_SEQ, {"token": popped.token})
        if not seq:
            raise LookupError("the pop's journal row is gone")
        erased = await run.rows(Stmt.JOURNAL_ERASED_SINCE, {"sid": session_id, "seq": seq[0][0]})
        if erased:
            await run.rollback()
            return False
        entry = _journal(session_id, token, JOURNAL_WRITE)
        await run.count(entry.stmt, entry.params)
        params = {"mid": popped.message_id, "sid": session_id, "data": popped.text, "now": now}
        await run.count(Stmt.INSERT_MESSAGE_WITH_ID, params)
        return True

    async def committed(self, run: Runner, session_id: str, token: str) -> bool:
        """Whether the write that carried ``token`` committed.

        The session row is locked first (``FOR UPDATE``): that waits for a
        transaction still holding it (one whose client vanished but whose
        server side is finishing), so the journal's answer is final.

        On Galera the node applies other nodes' commits a little after they
        were certified, and the check may run on another node than the write
        (a load balancer, a reconnect): with ``wsrep_sync_wait`` the reads
        first wait until this node has applied everything the cluster had
        committed, so a committed write cannot be missed.
        """
        if self.state.galera:
            await run.sql_run(dialects.GALERA_SYNC_READS)
        await run.rows(Stmt.READ_TOKENS, {"sid": session_id})
        found = bool(await run.rows(Stmt.JOURNAL_SEQ, {"token": token}))
        if self.state.galera:
            await run.sql_run(dialects.GALERA_DEFAULT_READS)
        return found

    async def prune_journal(self, run: Runner, window_ms: int) -> int:
        """Delete the journal rows older than ``window_ms`` (by the server's clock)."""
        return await run.count(Stmt.JOURNAL_PRUNE, {"window_ms": window_ms})


def _accept(text: str) -> None:
    """The check of a plain pop: every item may go."""


def _journal(session_id: str, token: str, kind: str) -> Step:
    """The journal row a write of ``kind`` adds, in its own transaction."""
    return Step(
        StepKind.COUNT, Stmt.JOURNAL_WRITE, {"token": token, "sid": session_id, "kind": kind}
    )
