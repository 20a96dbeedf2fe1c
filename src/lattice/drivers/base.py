"""The driver contract: what a session's operations run on, and what each driver can do.

A session never writes SQL or asks which database it is on. It asks its
engine's :class:`Driver` for one of four operations (append, read the latest,
pop, clear, plus the two that recovery needs: put back, read a write's
outcome), and the driver runs it on a :class:`Runner` in the best shape it
has. The shapes differ only in how many round trips they take; the
statements and their order (session row first, then its items) are the same
everywhere, which is what makes them safe under concurrency (see
:mod:`lattice.dialects`).

What a driver can do is said in class attributes, not by its name:

``append_in_one_statement``
    An append is one statement that commits by itself (PostgreSQL's
    ``WITH ... INSERT`` on asyncpg).
``pop_in_one_statement``
    A pop's session lock and ``DELETE ... RETURNING`` are one statement,
    inside its transaction (asyncpg).
``runs_plans``
    A transaction's statements (and its COMMIT) can be sent together:
    one hand-off to aiosqlite's thread, one multi-statement query on
    aiomysql. :meth:`Driver.plan_fits` says whether a given plan can.
``reads_open_transaction``
    A read opens a transaction the server does not report, so it must be
    ended explicitly (MySQL drivers outside autocommit).
``autocommit_reads``
    A single-statement read runs outside any transaction (asyncpg: no
    BEGIN/ROLLBACK round trips).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

__all__ = ["Driver", "Plan", "Runner", "Step", "StepKind", "Stmt", "run_steps"]


class Stmt(str, enum.Enum):
    """The names of the statements a session runs (fields of :class:`lattice.dialects.Statements`).

    A typo is an ``AttributeError`` at import time, not a ``KeyError`` at run time.
    Drivers may add statements of their own (``APPEND``, ``POP``).
    """

    UPSERT_SESSION = "upsert_session"
    LOCK_SESSION_CLEAR = "lock_session_clear"
    LOCK_SESSION_POP = "lock_session_pop"
    INSERT_MESSAGE = "insert_message"
    INSERT_MESSAGE_WITH_ID = "insert_message_with_id"
    SELECT_ALL = "select_all"
    SELECT_LATEST = "select_latest"
    SELECT_NEWEST = "select_newest"
    DELETE_NEWEST_RETURNING = "delete_newest_returning"
    DELETE_BY_ID = "delete_by_id"
    DELETE_ALL = "delete_all"
    READ_TOKENS = "read_tokens"
    JOURNAL_WRITE = "journal_write"
    JOURNAL_SEQ = "journal_seq"
    JOURNAL_ERASED_SINCE = "journal_erased_since"
    JOURNAL_PRUNE = "journal_prune"
    #: asyncpg: a whole append as one autocommit statement.
    APPEND = "append"
    #: asyncpg: a pop's lock and delete as one statement.
    POP = "pop"


class StepKind(enum.Enum):
    """What a :class:`Step` returns."""

    #: The number of rows the statement matched.
    COUNT = "count"
    #: The rows.
    ROWS = "rows"
    #: ``params`` is a list of parameter sets; the result is ``None``.
    MANY = "many"


@dataclass(frozen=True)
class Step:
    """One statement of a plan.

    With ``stop_if_empty``, a result of 0 or no rows ends the plan there and
    rolls the transaction back.
    """

    kind: StepKind
    stmt: Stmt
    params: Any
    stop_if_empty: bool = False


Plan = Sequence[Step]


class Runner(Protocol):
    """A connection in a transaction (or for one read), running named statements."""

    #: The transaction was ended (rolled back, or a plan committed it).
    finished: bool
    #: A statement that commits by itself was sent: a lost connection leaves
    #: the write's outcome unknown.
    maybe_committed: bool
    #: What the write returns if its transaction turns out to have committed,
    #: set by an operation before a statement that commits, so that a lost
    #: reply can still hand it over (``lattice.writes``).
    if_committed: Any

    async def rows(self, stmt: Stmt, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]: ...

    async def count(self, stmt: Stmt, params: Mapping[str, Any]) -> int: ...

    async def many(self, stmt: Stmt, params: list[dict[str, Any]]) -> None: ...

    async def sql_rows(self, sql: str) -> Sequence[Sequence[Any]]: ...

    async def sql_run(self, sql: str) -> None: ...

    async def rollback(self) -> None: ...

    async def steps(self, plan: Plan, commit: bool = True) -> list[Any]: ...


async def run_steps(runner: Runner, plan: Plan) -> list[Any]:
    """Run ``plan`` one statement at a time on ``runner`` (the general shape).

    The results of the statements that ran, in order. A step with
    ``stop_if_empty`` whose result is empty rolls back and ends the plan.
    """
    results: list[Any] = []
    for step in plan:
        if step.kind is StepKind.MANY:
            await runner.many(step.stmt, step.params)
            result: Any = None
        elif step.kind is StepKind.ROWS:
            result = await runner.rows(step.stmt, step.params)
        else:
            result = await runner.count(step.stmt, step.params)
        results.append(result)
        if step.stop_if_empty and not result:
            await runner.rollback()
            break
    return results


class Driver(ABC):
    """How one driver runs a session's statements; what it can do is in its attributes.

    :meth:`transaction` and :meth:`reading` hand out a :class:`Runner`. The
    general driver (:class:`lattice.drivers.sqlalchemy.SQLAlchemyDriver`) runs
    through SQLAlchemy's ``AsyncConnection``; the fast drivers
    (:class:`lattice.drivers.connection.FastDriver`) run on the driver's own
    connection object. Operations in the session's terms live in
    :mod:`lattice.drivers.operations`, which reads the capabilities below.
    """

    #: The SQLAlchemy driver name (``engine.dialect.driver``) this class speaks.
    name: ClassVar[str]
    append_in_one_statement: ClassVar[bool] = False
    pop_in_one_statement: ClassVar[bool] = False
    runs_plans: ClassVar[bool] = False
    reads_open_transaction: ClassVar[bool] = False
    autocommit_reads: ClassVar[bool] = False

    @abstractmethod
    def transaction(
        self, engine: Any, state: Any, tables: Any, autocommit: bool = False
    ) -> AbstractAsyncContextManager[Runner]:
        """A connection in a transaction, committed when the block ends without error.

        With ``autocommit`` (drivers with ``append_in_one_statement`` only)
        no transaction is opened: the one statement commits by itself.
        """

    @abstractmethod
    def reading(self, engine: Any, state: Any, tables: Any) -> AbstractAsyncContextManager[Runner]:
        """A connection for single-statement reads."""

    def extra_statements(self, tables: Any, dialect: Any, compiled: dict[Stmt, Any]) -> None:
        """Add driver-specific statements (``Stmt.APPEND``, ``Stmt.POP``) to ``compiled``."""
        return None
