"""What ``migrations/env.py`` does, kept in the package so it is typed and tested.

``env.py`` is three lines that call :func:`run_online` or :func:`run_offline`.
Everything that makes Lattice's migrations safe beside an application's own
Alembic history lives here:

* Lattice's version table is ``lattice_alembic_version`` and autogenerate
  only sees Lattice's two tables (:func:`include_name`), so the application's
  ``alembic_version`` and tables are never touched.
* Migrations run on a connection the caller supplies through
  ``config.attributes["connection"]`` (that is how :mod:`lattice.migrations`
  runs them, on an async engine's connection inside ``run_sync``), or on a
  new engine made from the URL.
* One migrator at a time: a session-level advisory lock on PostgreSQL and
  ``GET_LOCK`` on MySQL/MariaDB, taken before the current revision is read,
  so two deployments starting together apply each revision once. On a
  Galera cluster ``GET_LOCK`` is local to one node (MariaDB documents it as
  unsupported there), so the lock is a row of ``lattice_migration_lock``
  instead, inserted and committed: Galera certifies the commits of all nodes
  in one order, so of migrators on different nodes exactly one gets the row.
* SQLite rebuilds tables to change them (Alembic's batch mode). With foreign
  keys on, dropping the old sessions table would cascade into the messages,
  so the pragma is switched off for the run and restored afterwards.
* Each revision commits on its own (``transaction_per_migration``).
* ``--partitions N`` (PostgreSQL): checked before any revision runs, applied
  once the database is at the head (:mod:`lattice._partitioning`). A
  partitioned database is compared with :data:`lattice.schema.partitioned_metadata`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import _compat, _partitioning, schema
from .dialects import GALERA_PROBE, galera_from, is_transient_conflict
from .engines import make_engine, normalize_url
from .errors import LatticeError
from .schema_advanced import advanced_table_names

__all__ = [
    "LATTICE_TABLES",
    "URL_ENV_VAR",
    "VERSION_TABLE",
    "MigrationError",
    "include_name",
    "run_offline",
    "run_online",
]

VERSION_TABLE = "lattice_alembic_version"
URL_ENV_VAR = "LATTICE_DATABASE_URL"
#: The advanced sessions' tables (revision 0005).
_ADVANCED_TABLES = frozenset(
    advanced_table_names(schema.DEFAULT_SESSIONS_TABLE, schema.DEFAULT_MESSAGES_TABLE)
)
LATTICE_TABLES = frozenset(
    {
        schema.DEFAULT_SESSIONS_TABLE,
        schema.DEFAULT_MESSAGES_TABLE,
        schema.journal_table_name(schema.DEFAULT_SESSIONS_TABLE),
        *_ADVANCED_TABLES,
    }
)
#: The tables that, with no version table, say which revision a database is at.
_CORE_TABLES = (schema.DEFAULT_SESSIONS_TABLE, schema.DEFAULT_MESSAGES_TABLE)

# pg_advisory_lock key: the bytes of "lattice\0" read as a big-endian int64.
# Advisory locks are per database, so migrations of two databases never wait
# for each other.
_PG_LOCK_KEY = int.from_bytes(b"lattice\0", "big", signed=True)
# GET_LOCK names are server-wide, so the database's name is part of it.
_MYSQL_LOCK_NAME = "LEFT(CONCAT('lattice_migrations:', DATABASE()), 64)"
#: How long a migrator waits for another one to finish before giving up.
LOCK_TIMEOUT_S = 600
#: The lock of migrators on a Galera cluster: one row, held while it exists.
GALERA_LOCK_TABLE = "lattice_migration_lock"
#: A Galera lock row this old was left by a migrator that died holding it.
GALERA_LOCK_STALE_S = 3600
_GALERA_LOCK_NAME = "migrations"
_NOW_MS = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"

# config.attributes keys set by lattice.migrations.
ATTR_CONNECTION = "connection"
ATTR_ADOPT = "lattice_adopt"
ATTR_PROGRESS = "lattice_progress"
ATTR_PARTITIONS = "lattice_partitions"


class MigrationError(LatticeError):
    """A migration command could not run; the message says why and what to do."""


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate filter: only Lattice's own tables (and their contents)."""
    if type_ == "table":
        return name in LATTICE_TABLES
    return True


def _database_url(context: EnvironmentContext) -> str:
    config = context.config
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get(URL_ENV_VAR)
    )
    if not url:
        raise MigrationError(
            f"no database URL: pass --url, set {URL_ENV_VAR}, or set sqlalchemy.url"
        )
    return normalize_url(url).render_as_string(hide_password=False)


def _progress(context: EnvironmentContext) -> Callable[[str], None] | None:
    progress: Callable[[str], None] | None = context.config.attributes.get(ATTR_PROGRESS)
    return progress


def target_metadata(connection: Connection | None) -> Any:
    """The ``MetaData`` the database should match: partitioned or not."""
    if connection is not None and _partitioning.partition_count(connection):
        return schema.partitioned_metadata
    return schema.metadata


def _options(
    context: EnvironmentContext, dialect_name: str, connection: Connection | None = None
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "target_metadata": target_metadata(connection),
        "version_table": VERSION_TABLE,
        "include_name": include_name,
        "transaction_per_migration": True,
        "compare_type": True,
        # SQLite cannot ALTER most things: revisions rebuild tables there.
        "render_as_batch": dialect_name == "sqlite",
    }
    progress = _progress(context)
    if progress is not None:

        def on_apply(*, step: MigrationInfo, **_: Any) -> None:
            # Either way the step's "up" revision is the one applied or undone.
            script = step.up_revision
            if script is None or step.is_stamp:
                return
            verb = "applied" if step.is_upgrade else "reverted"
            progress(f"{verb} {script.revision}: {getattr(script, 'doc', '')}")

        options["on_version_apply"] = [on_apply]
    return options


def run_offline(context: EnvironmentContext) -> None:
    """Write the SQL of the migrations instead of running it (``--sql``)."""
    url = _database_url(context)
    dialect_name = normalize_url(url).get_backend_name()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_options(context, dialect_name),
    )
    if dialect_name == "sqlite":
        context.execute("PRAGMA foreign_keys = OFF")
    with context.begin_transaction():
        context.run_migrations()


def run_online(context: EnvironmentContext) -> None:
    """Run the migrations on the caller's connection, or on one made from the URL."""
    connection = context.config.attributes.get(ATTR_CONNECTION)
    if connection is not None:
        run_on_connection(context, connection)
        return
    asyncio.run(_run_from_url(context, _database_url(context)))


async def _run_from_url(context: EnvironmentContext, url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync_conn: run_on_connection(context, sync_conn))
    finally:
        await engine.dispose()


def run_on_connection(context: EnvironmentContext, connection: Connection) -> None:
    """Run the migrations on ``connection``, one migrator at a time."""
    # A connection already in a transaction belongs to a caller who will
    # commit it: everything then runs inside that transaction.
    external = connection.in_transaction()
    partitions: int | None = context.config.attributes.get(ATTR_PARTITIONS)
    with _exclusive(connection, external=external), _partitioning_errors():
        if partitions is not None:
            # Before anything changes: nothing half-done when it is refused.
            _partitioning.refuse_unless_possible(connection, partitions)
        options = _options(context, connection.dialect.name, connection)
        if not external and connection.in_transaction():
            # The probes' transaction: Alembic must find none, or it would
            # take the revisions for the caller's to commit.
            connection.commit()
        context.configure(connection=connection, **options)
        if context.config.attributes.get(ATTR_ADOPT):
            _adopt_existing_tables(context, connection)
            if not external:
                connection.commit()
        with context.begin_transaction():
            context.run_migrations()
        if partitions is not None:
            _partitioning.partition_messages(connection, partitions, _progress(context))
            if not external:
                connection.commit()


@contextmanager
def _partitioning_errors() -> Iterator[None]:
    try:
        yield
    except _partitioning.PartitioningError as exc:
        raise MigrationError(str(exc)) from exc


@contextmanager
def _exclusive(connection: Connection, *, external: bool) -> Iterator[None]:
    """Hold the migration lock (and, on SQLite, foreign keys off) meanwhile."""
    dialect = connection.dialect.name
    restore_foreign_keys = False
    galera_holder: str | None = None
    if dialect == "postgresql":
        # Inside a caller's transaction a transaction-level lock ends with it;
        # otherwise revisions commit one by one, so the lock is the session's.
        lock = "pg_advisory_xact_lock" if external else "pg_advisory_lock"
        if not external:
            # Wait for another migrator as long as on MySQL, whatever the
            # engine's lock_timeout (lattice.engines.limit_lock_waits); the
            # setting ends with this transaction, so the revisions' DDL keeps
            # the engine's bound.
            connection.execute(
                text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{LOCK_TIMEOUT_S}s"}
            )
        connection.execute(text(f"SELECT {lock}(:key)"), {"key": _PG_LOCK_KEY})
    elif dialect in ("mysql", "mariadb") and _is_galera(connection):
        galera_holder = _take_galera_lock(connection, external=external)
    elif dialect in ("mysql", "mariadb"):
        got = connection.execute(
            text(f"SELECT GET_LOCK({_MYSQL_LOCK_NAME}, :timeout)"), {"timeout": LOCK_TIMEOUT_S}
        ).scalar()
        if got != 1:
            raise MigrationError(
                f"another migration has held the lock for {LOCK_TIMEOUT_S} s; try again later"
            )
    elif dialect == "sqlite":
        foreign_keys = bool(connection.exec_driver_sql("PRAGMA foreign_keys").scalar())
        if foreign_keys and external:
            # Refuse before anything runs rather than stop half-way at a rebuild.
            raise MigrationError(
                "SQLite foreign keys are on and the connection is inside a transaction, "
                "where they cannot be switched off for the table rebuilds: pass an engine, "
                "a URL, or a connection outside a transaction"
            )
        if foreign_keys:
            # The pragma is a no-op inside a transaction; Python's sqlite3 has
            # not opened one yet, as nothing has been written on this connection.
            connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
            restore_foreign_keys = True
    if not external:
        connection.commit()
    try:
        yield
    finally:
        if not external and connection.in_transaction():
            connection.rollback()
        if dialect == "postgresql" and not external:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
        elif galera_holder is not None:
            _release_galera_lock(connection, galera_holder, external=external)
        elif dialect in ("mysql", "mariadb"):
            connection.execute(text(f"SELECT RELEASE_LOCK({_MYSQL_LOCK_NAME})"))
        elif restore_foreign_keys:
            connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        if not external:
            connection.commit()


def _is_galera(connection: Connection) -> bool:
    return galera_from(connection.exec_driver_sql(GALERA_PROBE).all())


def _take_galera_lock(connection: Connection, *, external: bool) -> str:
    """Insert and commit the lock row; wait while another migrator holds it.

    Row locks (``SELECT ... FOR UPDATE``) are local to a Galera node, but a
    committed row is the cluster's: two nodes inserting it at once meet in
    certification (error 1213 for all but one), a node that already has it
    refuses the duplicate key. A row older than :data:`GALERA_LOCK_STALE_S`
    (by the server's clock) is a dead migrator's and is taken over.
    """
    connection.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {GALERA_LOCK_TABLE} ("
        "name VARCHAR(64) NOT NULL PRIMARY KEY, holder CHAR(32) NOT NULL, "
        "taken_ms BIGINT NOT NULL)"
    )
    holder = os.urandom(16).hex()
    params = {"name": _GALERA_LOCK_NAME, "holder": holder, "stale_ms": GALERA_LOCK_STALE_S * 1000}
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    pause = 0.05
    while True:
        try:
            connection.execute(
                text(
                    f"DELETE FROM {GALERA_LOCK_TABLE} "
                    f"WHERE name = :name AND taken_ms < {_NOW_MS} - :stale_ms"
                ),
                params,
            )
            connection.execute(
                text(
                    f"INSERT INTO {GALERA_LOCK_TABLE} (name, holder, taken_ms) "
                    f"VALUES (:name, :holder, {_NOW_MS})"
                ),
                params,
            )
            if not external:
                connection.commit()
            return holder
        except DBAPIError as exc:
            held = isinstance(exc, IntegrityError) or is_transient_conflict(exc)
            if external or not held:
                raise
            _roll_back_aborted(connection)
        if time.monotonic() > deadline:
            raise MigrationError(
                f"another migration has held the lock for {LOCK_TIMEOUT_S} s; try again later "
                f"(if none is running, one died holding it: delete the row of "
                f"{GALERA_LOCK_TABLE})"
            )
        _compat.sleep_in_sync_code(pause)
        pause = min(pause * 2, 1.0)


def _roll_back_aborted(connection: Connection) -> None:
    """Roll back a transaction Galera aborted; the ROLLBACK itself may report the abort (1213)."""
    try:
        connection.rollback()
    except DBAPIError as exc:
        if not is_transient_conflict(exc):
            raise
        connection.rollback()


def _release_galera_lock(connection: Connection, holder: str, *, external: bool) -> None:
    for attempt in range(5):
        try:
            connection.execute(
                text(f"DELETE FROM {GALERA_LOCK_TABLE} WHERE name = :name AND holder = :holder"),
                {"name": _GALERA_LOCK_NAME, "holder": holder},
            )
            if not external:
                connection.commit()
            return
        except DBAPIError as exc:
            if external or not is_transient_conflict(exc) or attempt == 4:
                raise
            _roll_back_aborted(connection)
            _compat.sleep_in_sync_code(0.05 * (attempt + 1))


def _only_missing(diff: list[Any], names: frozenset[str]) -> bool:
    """True when autogenerate's differences are just the tables ``names`` to add."""
    for change in diff:
        op = change[0] if isinstance(change, tuple) else None
        if op == "add_table" and change[1].name in names:
            continue
        if op == "add_index" and change[1].table.name in names:
            continue
        return False
    return True


def _adopt_existing_tables(context: EnvironmentContext, connection: Connection) -> None:
    """Stamp tables made without migrations with the revision they are at.

    Tables made by the Agents SDK's ``SQLAlchemySession(create_tables=True)``
    are at the baseline revision; tables made by Lattice's
    ``create_tables=True`` match the head. Anything else is refused rather
    than guessed at.
    """
    migration: MigrationContext = context.get_context()
    if migration.get_current_heads():
        return
    inspector = inspect(connection)
    present = sorted(name for name in _CORE_TABLES if inspector.has_table(name))
    if not present:
        return
    script = context.script
    if len(present) == 1:
        raise MigrationError(
            f"found table {present[0]} without its partner and no {VERSION_TABLE}: "
            "create or drop it by hand, then run `lattice db upgrade` again"
        )
    columns = {c["name"] for c in inspector.get_columns(schema.DEFAULT_SESSIONS_TABLE)}
    if "item_count" not in columns:
        revision = script.get_base() or "base"
        what = "the OpenAI Agents SDK's tables"
    elif not (diff := compare_metadata(migration, target_metadata(connection))):
        revision = "heads"
        what = "tables made by create_tables=True"
    elif _only_missing(diff, _ADVANCED_TABLES):
        # create_tables=True before the advanced sessions' tables (revision 0005).
        revision = "0004"
        what = "tables made by create_tables=True before the advanced sessions' tables"
    elif _only_missing(
        diff, _ADVANCED_TABLES | {schema.journal_table_name(schema.DEFAULT_SESSIONS_TABLE)}
    ):
        # create_tables=True before the write journal (revision 0004) existed.
        revision = "0003"
        what = "tables made by create_tables=True before the write journal"
    else:
        raise MigrationError(
            f"the tables {', '.join(present)} exist, but match no Lattice revision and "
            f"{VERSION_TABLE} is missing: find the revision they are at with "
            "`lattice db history`, then run `lattice db stamp <revision>`"
        )
    migration.stamp(script, revision)
    progress = _progress(context)
    if progress is not None:
        heads = ", ".join(migration.get_current_heads())
        progress(f"found {what}; stamped revision {heads}")
