"""Bounded lock waits: how long a statement waits for another transaction's lock.

Engines Lattice makes get :data:`DEFAULT_LOCK_TIMEOUT_S` (``lattice.engines.make_engine``);
engines you make get a bound from :func:`limit_lock_waits`. A Lattice write
that waits longer raises :class:`lattice.errors.LockTimeoutError`
(``lattice.writes.check_lock_timeout``). docs/guarantees.md says why it
matters: a cancelled write runs to its end before the cancellation reaches
the caller, so without a bound ``asyncio.wait_for`` cannot return while a
lock is held.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from .dialects import lock_timeout_statement

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "check_lock_timeout", "limit_lock_waits", "names_lock_timeout"]

#: How long a write on a PostgreSQL or MySQL engine Lattice makes waits for a
#: lock another transaction holds (a session row) before it gives up with
#: LockTimeoutError. PostgreSQL's own default is to wait forever.
DEFAULT_LOCK_TIMEOUT_S = 10.0


def limit_lock_waits(engine: AsyncEngine, seconds: float) -> AsyncEngine:
    """Bound how long a statement on ``engine`` waits for another transaction's lock.

    For an engine you make yourself (engines Lattice makes get
    :data:`DEFAULT_LOCK_TIMEOUT_S`, or ``lock_timeout`` from
    ``engine_kwargs``). Each new connection gets the setting when it opens:
    ``lock_timeout`` on PostgreSQL, ``innodb_lock_wait_timeout`` on MySQL
    (whole seconds), ``busy_timeout`` on SQLite. A Lattice write that waits
    longer raises :class:`lattice.errors.LockTimeoutError` having written
    nothing, so ``asyncio.wait_for(session.add_items(...), t)`` returns
    within ``t`` plus this bound. Call it before the engine's first use:
    connections already in its pool keep what they had. Returns ``engine``.

    Behind PgBouncer in transaction mode a per-connection setting does not
    follow the client; set ``lock_timeout`` on the database role instead
    (docs/guarantees.md).
    """
    if not isinstance(engine, AsyncEngine):
        raise TypeError(f"engine must be a sqlalchemy AsyncEngine, not {type(engine).__name__}")
    check_lock_timeout(seconds)
    sql, parameters = lock_timeout_statement(engine.dialect, seconds)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql, parameters) if parameters else cursor.execute(sql)
        finally:
            cursor.close()
        # A setting made in a transaction that the pool then rolls back
        # would be undone (PostgreSQL); commit it.
        dbapi_connection.commit()

    return engine


def check_lock_timeout(seconds: Any) -> None:
    """Refuse a lock timeout that is not a number of seconds in (0, one day)."""
    number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    if not number or not 0 < seconds < 86_400:
        raise ValueError(
            f"the lock timeout must be a positive number of seconds below a day, not {seconds!r}"
        )


def names_lock_timeout(connect_args: Any) -> bool:
    """Whether driver options already set a lock timeout (asyncpg's server_settings,
    libpq/psycopg ``options``, a MySQL ``init_command``)."""
    text = repr(connect_args or {}).lower()
    return "lock_timeout" in text or "lock_wait_timeout" in text
