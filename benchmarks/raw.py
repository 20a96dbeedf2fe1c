"""The raw drivers doing the same logical work as a session, with nothing in between.

Each driver keeps one connection for sequential work (no pool round trips)
and, for the concurrent operation ``f``, a pool of the same size SQLAlchemy
gives Lattice and the SDK (5 + 10 overflow = 15 connections); SQLite's "pool"
is the one connection taken in turns, since SQLite has one writer anyway.

The work per call, as the issue states it:

* append: one transaction: upsert the session row (``updated_at``,
  ``item_count``), insert the items;
* read: one indexed ``SELECT`` (latest ``N`` by id, or all);
* pop: one ``DELETE ... RETURNING`` on PostgreSQL and SQLite; on MySQL,
  which has no ``DELETE ... RETURNING``, ``SELECT ... FOR UPDATE`` then
  ``DELETE`` in one transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import URL

__all__ = ["RawDriver", "raw_driver"]

POOL_SIZE = 15
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode = json.loads


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RawDriver:
    """One backend's raw driver: a held connection, and a pool for ``f``."""

    pooled = False
    #: PostgreSQL: each pop as BEGIN; DELETE ... RETURNING; COMMIT (the
    #: guarantee Lattice's pop has: the item is in hand before COMMIT).
    pops_in_transaction = False

    def __init__(self) -> None:
        self._sql: dict[str, dict[str, str]] = {}

    def _q(self, prefix: str) -> dict[str, str]:
        """The driver's SQL for the tables of ``prefix`` (built once)."""
        sql = self._sql.get(prefix)
        if sql is None:
            sql = self._sql[prefix] = self._statements(*_names(prefix))
        return sql

    def _statements(self, s: str, m: str) -> dict[str, str]:
        """The SQL of each operation, on sessions table ``s`` and messages table ``m``."""
        raise NotImplementedError

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def session(self, session_id: str, prefix: str) -> RawSession:
        return RawSession(self, session_id, prefix)

    async def add(self, sid: str, prefix: str, texts: list[str]) -> None:
        raise NotImplementedError

    async def get(self, sid: str, prefix: str, limit: int | None) -> list[str]:
        raise NotImplementedError

    async def pop(self, sid: str, prefix: str) -> str | None:
        raise NotImplementedError


class RawSession:
    """The session protocol's three hot calls, on a raw driver."""

    def __init__(self, driver: RawDriver, session_id: str, prefix: str) -> None:
        self.session_id = session_id
        self._driver = driver
        self._prefix = prefix

    async def add_items(self, items: list[dict[str, Any]]) -> None:
        await self._driver.add(self.session_id, self._prefix, [_encode(i) for i in items])

    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        rows = await self._driver.get(self.session_id, self._prefix, limit)
        return [_decode(text) for text in rows]

    async def pop_item(self) -> dict[str, Any] | None:
        text = await self._driver.pop(self.session_id, self._prefix)
        return None if text is None else _decode(text)


def _names(prefix: str) -> tuple[str, str]:
    return f"{prefix}_sessions", f"{prefix}_messages"


class _ServerDriver(RawDriver):
    """A server's driver: one held connection, and a pool with ``acquire()`` for ``f``."""

    def __init__(self, url: URL) -> None:
        super().__init__()
        self._url = url
        self._conn: Any = None
        self._pool: Any = None

    @asynccontextmanager
    async def _use(self) -> AsyncIterator[Any]:
        if self.pooled:
            async with self._pool.acquire() as conn:
                yield conn
        else:
            yield self._conn


class _Postgres(_ServerDriver):
    def _dsn(self) -> dict[str, Any]:
        u = self._url
        return {
            "host": u.host,
            "port": u.port or 5432,
            "user": u.username,
            "password": u.password,
            "database": u.database,
        }

    async def open(self) -> None:
        import asyncpg

        self._conn = await asyncpg.connect(**self._dsn())
        self._pool = await asyncpg.create_pool(min_size=0, max_size=POOL_SIZE, **self._dsn())

    async def close(self) -> None:
        await self._conn.close()
        await self._pool.close()

    def _statements(self, s: str, m: str) -> dict[str, str]:
        return {
            "upsert": (
                f"INSERT INTO {s} (session_id, created_at, updated_at, item_count) "
                "VALUES ($1, $2, $2, $3) ON CONFLICT (session_id) DO UPDATE SET "
                f"updated_at = EXCLUDED.updated_at, item_count = {s}.item_count + "
                "EXCLUDED.item_count"
            ),
            "insert": (
                f"INSERT INTO {m} (session_id, message_data, created_at) VALUES ($1, $2, $3)"
            ),
            "all": f"SELECT message_data FROM {m} WHERE session_id = $1 ORDER BY id",
            "latest": (
                f"SELECT message_data FROM {m} WHERE session_id = $1 ORDER BY id DESC LIMIT $2"
            ),
            "pop": (
                f"DELETE FROM {m} WHERE id = (SELECT id FROM {m} WHERE session_id = $1 "
                "ORDER BY id DESC LIMIT 1) RETURNING message_data"
            ),
        }

    async def add(self, sid: str, prefix: str, texts: list[str]) -> None:
        q, now = self._q(prefix), _now()
        async with self._use() as conn, conn.transaction():
            await conn.execute(q["upsert"], sid, now, len(texts))
            if len(texts) == 1:
                await conn.execute(q["insert"], sid, texts[0], now)
            else:
                await conn.executemany(q["insert"], [(sid, t, now) for t in texts])

    async def get(self, sid: str, prefix: str, limit: int | None) -> list[str]:
        q = self._q(prefix)
        async with self._use() as conn:
            if limit is None:
                return [r[0] for r in await conn.fetch(q["all"], sid)]
            rows = await conn.fetch(q["latest"], sid, limit)
            return [r[0] for r in reversed(rows)]

    async def pop(self, sid: str, prefix: str) -> str | None:
        async with self._use() as conn:
            if self.pops_in_transaction:
                async with conn.transaction():
                    text: str | None = await conn.fetchval(self._q(prefix)["pop"], sid)
                return text
            text = await conn.fetchval(self._q(prefix)["pop"], sid)
            return text


class _MySQL(_ServerDriver):
    def _kw(self) -> dict[str, Any]:
        u = self._url
        return {
            "host": u.host,
            "port": u.port or 3306,
            "user": u.username,
            "password": u.password or "",
            "db": u.database,
            "charset": "utf8mb4",
            "autocommit": True,
        }

    async def open(self) -> None:
        import aiomysql

        self._conn = await aiomysql.connect(**self._kw())
        self._pool = await aiomysql.create_pool(minsize=0, maxsize=POOL_SIZE, **self._kw())

    async def close(self) -> None:
        self._conn.close()
        self._pool.close()
        await self._pool.wait_closed()

    def _statements(self, s: str, m: str) -> dict[str, str]:
        return {
            "upsert": (
                f"INSERT INTO {s} (session_id, created_at, updated_at, item_count) "
                "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                "updated_at = VALUES(updated_at), item_count = item_count + VALUES(item_count)"
            ),
            "insert": (
                f"INSERT INTO {m} (session_id, message_data, created_at) VALUES (%s, %s, %s)"
            ),
            "all": f"SELECT message_data FROM {m} WHERE session_id = %s ORDER BY id",
            "latest": (
                f"SELECT message_data FROM {m} WHERE session_id = %s ORDER BY id DESC LIMIT %s"
            ),
            "newest": (
                f"SELECT id, message_data FROM {m} WHERE session_id = %s "
                "ORDER BY id DESC LIMIT 1 FOR UPDATE"
            ),
            "delete": f"DELETE FROM {m} WHERE id = %s",
        }

    async def add(self, sid: str, prefix: str, texts: list[str]) -> None:
        q, now = self._q(prefix), _now().replace(tzinfo=None)
        async with self._use() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    await cur.execute(q["upsert"], (sid, now, now, len(texts)))
                    # aiomysql folds this into one multi-row INSERT.
                    await cur.executemany(q["insert"], [(sid, t, now) for t in texts])
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise

    async def get(self, sid: str, prefix: str, limit: int | None) -> list[str]:
        q = self._q(prefix)
        async with self._use() as conn, conn.cursor() as cur:
            if limit is None:
                await cur.execute(q["all"], (sid,))
                return [r[0] for r in await cur.fetchall()]
            await cur.execute(q["latest"], (sid, limit))
            return [r[0] for r in reversed(await cur.fetchall())]

    async def pop(self, sid: str, prefix: str) -> str | None:
        q = self._q(prefix)
        async with self._use() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    await cur.execute(q["newest"], (sid,))
                    row = await cur.fetchone()
                    if row is not None:
                        await cur.execute(q["delete"], (row[0],))
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise
            return None if row is None else str(row[1])


class _SQLite(RawDriver):
    def __init__(self, url: URL) -> None:
        super().__init__()
        self._path = url.database or ""
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        import aiosqlite

        from lattice.engines import SQLITE_BUSY_TIMEOUT_MS

        # Autocommit at the driver (isolation_level=None) and explicit BEGIN:
        # the same pragmas Lattice sets on its connections.
        self._conn = await aiosqlite.connect(self._path, isolation_level=None)
        for pragma in (
            f"busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
            "foreign_keys = ON",
            "journal_mode = WAL",
            "synchronous = NORMAL",
        ):
            await self._conn.execute(f"PRAGMA {pragma}")

    async def close(self) -> None:
        await self._conn.close()

    def _statements(self, s: str, m: str) -> dict[str, str]:
        return {
            "upsert": (
                f"INSERT INTO {s} (session_id, created_at, updated_at, item_count) "
                "VALUES (?1, ?2, ?2, ?3) ON CONFLICT (session_id) DO UPDATE SET "
                "updated_at = excluded.updated_at, item_count = item_count + "
                "excluded.item_count"
            ),
            "insert": (f"INSERT INTO {m} (session_id, message_data, created_at) VALUES (?, ?, ?)"),
            "all": f"SELECT message_data FROM {m} WHERE session_id = ? ORDER BY id",
            "latest": (
                f"SELECT message_data FROM {m} WHERE session_id = ? ORDER BY id DESC LIMIT ?"
            ),
            "pop": (
                f"DELETE FROM {m} WHERE id = (SELECT id FROM {m} WHERE session_id = ? "
                "ORDER BY id DESC LIMIT 1) RETURNING message_data"
            ),
        }

    async def add(self, sid: str, prefix: str, texts: list[str]) -> None:
        q, now = self._q(prefix), _now().replace(tzinfo=None).isoformat(" ")
        async with self._lock:
            await self._conn.execute("BEGIN")
            try:
                await self._conn.execute(q["upsert"], (sid, now, len(texts)))
                await self._conn.executemany(q["insert"], [(sid, t, now) for t in texts])
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise

    async def get(self, sid: str, prefix: str, limit: int | None) -> list[str]:
        q = self._q(prefix)
        async with self._lock:
            if limit is None:
                return [r[0] for r in await self._conn.execute_fetchall(q["all"], (sid,))]
            rows = await self._conn.execute_fetchall(q["latest"], (sid, limit))
            return [r[0] for r in reversed(list(rows))]

    async def pop(self, sid: str, prefix: str) -> str | None:
        async with self._lock:
            rows = list(await self._conn.execute_fetchall(self._q(prefix)["pop"], (sid,)))
        return None if not rows else str(rows[0][0])


def raw_driver(url: URL) -> RawDriver:
    """The raw driver for ``url``'s backend."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        return _Postgres(url)
    if backend == "mysql":
        return _MySQL(url)
    return _SQLite(url)
