"""Run Lattice's Alembic migrations from code: the facade ``lattice db`` wraps.

Every function takes a database URL (the application's async URL, such as
``postgresql+asyncpg://...``; a driverless one is mapped to Lattice's async
driver), an ``AsyncEngine`` or an ``AsyncConnection``. A URL gets a private
engine, disposed before the function returns; an engine or connection you pass
is yours and is left open. On a connection already inside a transaction the
migrations run in that transaction and you commit it.

Lattice keeps its own version table, ``lattice_alembic_version``, so its
history and the application's live side by side in one database. The scripts
ship inside the package (``lattice/_migrations``); from a checkout they are the
repository's ``migrations/``.

Example::

    import lattice.migrations

    await lattice.migrations.upgrade("postgresql+asyncpg://app@db/app")
    await lattice.migrations.check(engine)   # raises SchemaBehindError if behind
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic import context as alembic_context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import _compat, _partitioning, urls
from ._migration_env import (
    ATTR_ADOPT,
    ATTR_CONNECTION,
    ATTR_PARTITIONS,
    ATTR_PROGRESS,
    LATTICE_TABLES,
    URL_ENV_VAR,
    VERSION_TABLE,
    MigrationError,
)
from .engines import make_engine, normalize_url

__all__ = [
    "URL_ENV_VAR",
    "VERSION_TABLE",
    "DatabaseUnavailableError",
    "MigrationError",
    "Revision",
    "SchemaBehindError",
    "check",
    "current",
    "downgrade",
    "downgrade_sql",
    "exclude_lattice_tables",
    "history",
    "moves_schema",
    "script_location",
    "stamp",
    "upgrade",
    "upgrade_sql",
]

#: What the functions accept as the database.
Target = str | URL | AsyncEngine | AsyncConnection
Progress = Callable[[str], None]


class DatabaseUnavailableError(MigrationError):
    """The database could not be reached, or refused the credentials."""


class SchemaBehindError(MigrationError):
    """The database's schema is older than this Lattice's (``check`` failed)."""

    def __init__(self, message: str, *, current: str | None, head: str) -> None:
        super().__init__(message)
        self.current = current
        self.head = head


@dataclass(frozen=True)
class Revision:
    """One migration script."""

    revision: str
    down_revision: str | None
    doc: str
    is_head: bool


def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``.

    Inside an installed wheel it is ``lattice/_migrations``; in an editable
    install from a checkout, the repository's top-level ``migrations/``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(f"Lattice's migration scripts are missing (looked beside {here})")


def exclude_lattice_tables(name: str | None, type_: str, parent_names: Any) -> bool:
    """``include_name`` for the application's own Alembic env: skip Lattice's tables.

    Pass it to ``context.configure(include_name=...)`` so the application's
    autogenerate neither drops nor re-creates Lattice's tables.
    """
    if type_ == "table":
        return name not in LATTICE_TABLES and name != VERSION_TABLE
    return True


def moves_schema(context: Any) -> bool:
    """True when the application's Alembic command changes its schema.

    For the application's own ``env.py``: run Lattice's upgrade only then
    (``alembic upgrade``, ``downgrade``, ``stamp``), never as a side effect of
    ``alembic revision --autogenerate``, ``check``, ``current`` or the
    offline (``--sql``) mode. ``context`` is ``alembic.context``.
    """
    if context.is_offline_mode():
        return False
    # Alembic gives a destination revision to exactly the commands that move
    # the schema (EnvironmentContext(..., destination_rev=...)); the configured
    # MigrationContext carries those options. Call after context.configure().
    opts: dict[str, Any] = getattr(context.get_context(), "opts", {})
    return "destination_rev" in opts


def _config(**attributes: Any) -> Config:
    config = Config(output_buffer=attributes.pop("output_buffer", None))
    config.set_main_option("script_location", str(script_location()))
    url = attributes.pop("url", None)
    if url is not None:
        # Config values are interpolated: a literal % (as in an escaped
        # password) must be written %%.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes.update(attributes)
    return config


def _safe_url(url: URL) -> str:
    return urls.shown(url)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


# Packages whose exceptions a failed connect may raise unwrapped (SQLAlchemy 2.0
# passes asyncpg's authentication errors through as they are; 2.1 wraps them).
_DRIVER_PACKAGES = frozenset({"asyncpg", "pymysql", "aiomysql", "sqlite3", "aiosqlite"})


def _driver_error(exc: BaseException) -> bool:
    return type(exc).__module__.partition(".")[0] in _DRIVER_PACKAGES


@asynccontextmanager
async def _connection(target: Target) -> AsyncIterator[AsyncConnection]:
    """An ``AsyncConnection`` to ``target``; only one made here is closed here."""
    if isinstance(target, AsyncConnection):
        yield target
        return
    engine = target if isinstance(target, AsyncEngine) else make_engine(target)
    try:
        try:
            conn = await engine.connect()
        except Exception as exc:
            if not isinstance(exc, (DBAPIError, OSError, TimeoutError)) and not _driver_error(exc):
                raise
            raise DatabaseUnavailableError(
                f"cannot connect to {_safe_url(engine.url)}: {_reason(exc)}"
            ) from exc
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        if engine is not target:
            await engine.dispose()


@contextmanager
def _alembic_errors() -> Iterator[None]:
    """Alembic's errors (unknown revision, ...) as :class:`MigrationError`."""
    # Alembic's ``context`` module proxy belongs to one EnvironmentContext at a
    # time; when we run inside the application's own env.py, put its back.
    outer = _compat.alembic_proxy(alembic_context)
    try:
        yield
    except (CommandError, RevisionError) as exc:
        raise MigrationError(str(exc)) from exc
    finally:
        _compat.restore_alembic_proxy(alembic_context, outer)


async def _run(target: Target, action: Callable[[Config], None], **attributes: Any) -> None:
    async with _connection(target) as conn:

        def run(sync_conn: Connection) -> None:
            with _alembic_errors():
                action(_config(**{ATTR_CONNECTION: sync_conn}, **attributes))

        await conn.run_sync(run)


def _dialect_name(target: Target) -> str:
    if isinstance(target, (AsyncEngine, AsyncConnection)):
        return target.dialect.name
    return normalize_url(target).get_backend_name()


async def upgrade(
    target: Target,
    revision: str = "head",
    *,
    progress: Progress | None = None,
    partitions: int | None = None,
) -> None:
    """Upgrade the database to ``revision`` (default: the newest).

    Tables made by the Agents SDK's ``SQLAlchemySession(create_tables=True)``
    or by Lattice's ``create_tables=True``, without a version table, are
    recognised, stamped with their revision and upgraded in place.

    Args:
        target: URL, engine or connection.
        revision: Where to go: ``head``, a revision id, or ``+1``.
        progress: Called with a line of text as each revision is applied.
        partitions: PostgreSQL only: make ``agent_messages`` hash-partitioned
            by ``session_id`` into this many partitions (1 to
            :data:`lattice._partitioning.MAX_PARTITIONS`), primary key
            ``(session_id, id)``. Only at the head, and only while the
            messages table is empty or new (docs/partitioning.md).

    Raises:
        ValueError: ``partitions`` is not a sane count, the database is not
            PostgreSQL, or ``revision`` is not the head.
        DatabaseUnavailableError: the database cannot be reached.
        MigrationError: unknown revision, tables that match no revision, or
            a messages table that cannot be partitioned (it holds items, or
            has another number of partitions).
    """
    if partitions is not None:
        _partitioning.check_partitions(partitions)
        _partitioning.check_backend(_dialect_name(target))
        if revision not in ("head", "heads"):
            raise ValueError(
                f"partitions make the head revision's layout: upgrade to head, not {revision!r}"
            )
    await _run(
        target,
        lambda config: command.upgrade(config, revision),
        **{ATTR_ADOPT: True, ATTR_PROGRESS: progress, ATTR_PARTITIONS: partitions},
    )


async def downgrade(target: Target, revision: str, *, progress: Progress | None = None) -> None:
    """Downgrade the database to ``revision`` (``base`` removes Lattice's tables)."""
    await _run(
        target, lambda config: command.downgrade(config, revision), **{ATTR_PROGRESS: progress}
    )


async def stamp(target: Target, revision: str) -> None:
    """Record ``revision`` as the database's revision without running anything."""
    await _run(target, lambda config: command.stamp(config, revision))


async def current(target: Target) -> str | None:
    """The database's revision, or ``None`` when Lattice's version table is empty or missing."""
    async with _connection(target) as conn:

        def read(sync_conn: Connection) -> tuple[str, ...]:
            context = MigrationContext.configure(sync_conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_heads()

        heads = await conn.run_sync(read)
    return ", ".join(heads) if heads else None


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


async def history() -> list[Revision]:
    """Every revision, newest first."""
    script = _script()
    heads = set(script.get_heads())
    return [
        Revision(
            revision=s.revision,
            down_revision=s.down_revision if isinstance(s.down_revision, str) else None,
            doc=s.doc,
            is_head=s.revision in heads,
        )
        for s in script.walk_revisions()
    ]


async def _unversioned_tables(target: Target) -> list[str]:
    """Lattice's default tables present in a database that has no Lattice revision."""
    async with _connection(target) as conn:

        def present(sync_conn: Connection) -> list[str]:
            inspector = inspect(sync_conn)
            return sorted(name for name in LATTICE_TABLES if inspector.has_table(name))

        return await conn.run_sync(present)


async def check(target: Target) -> str:
    """Return the database's revision if it is the newest; raise otherwise.

    Raises:
        SchemaBehindError: the database is behind this version of Lattice; the
            message names the command that brings it up to date.
        MigrationError: the database is at a revision this Lattice does not know
            (a newer Lattice migrated it).
    """
    head = _script().get_current_head()
    assert head is not None
    at = await current(target)
    if at == head:
        return head
    known = {r.revision for r in await history()}
    if at is not None and at not in known:
        raise MigrationError(
            f"the database is at revision {at}, which this version of Lattice does not "
            "know: a newer Lattice migrated it; upgrade the lattice-sessions package"
        )
    shown = at or "none"
    if at is None:
        present = await _unversioned_tables(target)
        if present:
            shown = (
                f"none: {', '.join(present)} exist without a Lattice revision (made by "
                "create_tables=True or the Agents SDK; the upgrade adopts them in place)"
            )
    raise SchemaBehindError(
        f"the database's Lattice schema is at revision {shown}, behind {head}: "
        "run `lattice db upgrade` (or `await lattice.migrations.upgrade(url)`)",
        current=at,
        head=head,
    )


def _offline(url: str | URL, action: Callable[[Config], None]) -> str:
    buffer = io.StringIO()
    rendered = normalize_url(url).render_as_string(hide_password=False)
    config = _config(url=rendered, output_buffer=buffer)
    with _alembic_errors():
        action(config)
    return buffer.getvalue()


def _span(from_revision: str | None, revision: str) -> str:
    return f"{from_revision}:{revision}" if from_revision else revision


async def upgrade_sql(
    url: str | URL, revision: str = "head", *, from_revision: str | None = None
) -> str:
    """The SQL that upgrades a database, for a DBA to review and run (no connection made).

    Args:
        url: Only its dialect matters: ``postgresql://``, ``mysql://`` or ``sqlite://``.
        revision: Where the script ends.
        from_revision: The database's current revision; by default an empty
            database (the script then creates everything).
    """
    return _offline(
        url, lambda config: command.upgrade(config, _span(from_revision, revision), sql=True)
    )


async def downgrade_sql(url: str | URL, revision: str, *, from_revision: str) -> str:
    """The SQL that downgrades a database from ``from_revision`` to ``revision``."""
    return _offline(
        url, lambda config: command.downgrade(config, f"{from_revision}:{revision}", sql=True)
    )
