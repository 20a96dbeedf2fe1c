"""aiomysql: MySQL and MariaDB, a transaction's statements and COMMIT as one query.

The connection is not in autocommit (SQLAlchemy's setting): the first
statement opens the transaction, and a read must end with ROLLBACK so the
connection does not keep its snapshot and metadata locks in the pool (the
server does not flag a transaction that has only read).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from .base import Plan, StepKind
from .connection import FastDriver

__all__ = ["AiomysqlDriver"]


class AiomysqlDriver(FastDriver):
    """MySQL/MariaDB through aiomysql."""

    name: ClassVar[str] = "aiomysql"
    reads_open_transaction: ClassVar[bool] = True
    runs_plans: ClassVar[bool] = True
    #: aiomysql's own limit on one statement (``Cursor.executemany`` chunks at it).
    MAX_PLAN_BYTES: ClassVar[int] = 1_024_000

    async def begin(self, conn: Any) -> None:
        # Outside autocommit the first statement opens the transaction; an
        # engine in AUTOCOMMIT needs it opened explicitly.
        if conn.get_autocommit():
            await conn.begin()

    async def rows(self, conn: Any, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        async with conn.cursor() as cursor:
            await cursor.execute(sql, args)
            return await cursor.fetchall()  # type: ignore[no-any-return]

    async def count(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        async with conn.cursor() as cursor:
            # Rows matched, not changed: SQLAlchemy connects with CLIENT.FOUND_ROWS.
            return int(await cursor.execute(sql, args))

    async def many(self, conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
        async with conn.cursor() as cursor:
            # aiomysql folds an INSERT's rows into one multi-row statement.
            await cursor.executemany(sql, args)

    def idle(self, conn: Any) -> bool:
        return not conn.get_transaction_status()

    async def read_and_end(
        self, conn: Any, sql: str, args: tuple[Any, ...]
    ) -> Sequence[Sequence[Any]]:
        # The SELECT and its ROLLBACK in one round trip: aiomysql always
        # connects with CLIENT.MULTI_STATEMENTS, and interpolates the
        # arguments itself, so the two statements go as one query and come
        # back as two results (closing the cursor reads the second). If the
        # SELECT fails the server skips the ROLLBACK, and the error path rolls
        # back. get_items(limit=20) on MariaDB: 2 round trips -> 1 (see
        # docs/performance.md).
        async with conn.cursor() as cursor:
            await cursor.execute(sql + "; ROLLBACK", args)
            return await cursor.fetchall()  # type: ignore[no-any-return]

    # A write transaction as ONE query (statements joined by ";", then
    # COMMIT), answered by one result per statement: one round trip instead
    # of one per statement plus one for COMMIT. Only for plans that never
    # stop early (the server runs every statement sent) and whose query stays
    # under aiomysql's own statement size, so a big append still goes as
    # executemany's chunks; an item near max_allowed_packet is refused before
    # (lattice.dialects.check_packet). The joined statements are one template
    # whose values aiomysql binds itself, like any query's: Lattice builds no
    # literal. Its text escaping follows the server's NO_BACKSLASH_ESCAPES
    # flag, and ids are bound as text (lattice.schema.SessionId), so no value
    # can end its literal and reach the next statement.
    def plan_fits(self, conn: Any, plan: Plan) -> bool:
        return not any(step.stop_if_empty for step in plan)

    async def run_plan(
        self, conn: Any, plan: list[tuple[StepKind, str, Any, bool]], commit: bool
    ) -> list[Any]:
        parts: list[str] = []
        args: list[Any] = []
        for kind, sql, values, _ in plan:
            if kind is StepKind.MANY:
                # INSERT ... VALUES (...) as one multi-row INSERT, as executemany does.
                head, row = sql.rsplit(" VALUES ", 1)
                parts.append(f"{head} VALUES {','.join([row] * len(values))}")
                for one in values:
                    args.extend(one)
            else:
                parts.append(sql)
                args.extend(values)
        template = ";\n".join([*parts, "COMMIT"] if commit else parts)
        # What the bound query can grow to: each value escaped (at most two
        # bytes a character) and quoted.
        size = len(template.encode("utf-8")) + sum(
            2 * len(value) + 3 if isinstance(value, str) else 32 for value in args
        )
        if size > self.MAX_PLAN_BYTES:
            return []  # too big for one query: the caller runs the steps one by one
        results: list[Any] = []
        async with conn.cursor() as cursor:
            await cursor.execute(template, tuple(args))
            for kind, _, _, _ in plan:
                results.append(
                    await cursor.fetchall() if kind is StepKind.ROWS else cursor.rowcount
                )
                await cursor.nextset()
        return results
