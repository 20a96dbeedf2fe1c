"""``lattice db ...``: run Lattice's migrations from the shell.

Exit codes: 0 success; 1 the command failed (database unreachable, wrong
credentials, unknown revision, a migration error, no SQLite file at the path
of a command that only reads, a declined prompt); 2 usage (no URL, a URL
Lattice cannot use, its driver not installed); 3 ``check`` found the schema
behind this version of Lattice, or ``repair-counts --check`` wrong counts.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .. import _partitioning, maintenance, migrations, urls
from ._common import EXIT_FAILED, EXIT_USAGE, fail, usable_url

__all__ = ["EXIT_BEHIND", "EXIT_FAILED", "EXIT_USAGE", "db_app", "register"]

EXIT_BEHIND = 3

_T = TypeVar("_T")

db_app = typer.Typer(
    name="db",
    help="Create and migrate Lattice's tables (Alembic, version table lattice_alembic_version).",
    no_args_is_help=True,
)

_URL_HELP = (
    "Database URL, as the application uses it (e.g. postgresql+asyncpg://user@host/db); "
    f"default: ${migrations.URL_ENV_VAR}."
)
URL_OPTION: Any = typer.Option(
    None, "--url", metavar="URL", envvar=migrations.URL_ENV_VAR, help=_URL_HELP
)
SQL_OPTION: Any = typer.Option(
    False, "--sql", help="Print the SQL instead of running it (offline; no connection is made)."
)
FROM_OPTION: Any = typer.Option(
    None,
    "--from",
    metavar="REVISION",
    help="With --sql: the revision the database is at (default: empty database).",
)


def register(app: typer.Typer) -> None:
    """Add the ``db`` command group to the ``lattice`` command."""
    app.add_typer(db_app, name="db")


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise fail(message, code)


def _require_url(url: str | None, *, exists: bool = False) -> str:
    # exists: a command that only reads must not create a SQLite file at a mistyped path.
    return usable_url(url, env_var=migrations.URL_ENV_VAR, exists=exists)


def _shown(url: str) -> str:
    return urls.shown(url)


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro``; turn every expected failure into a message and an exit code."""
    try:
        return asyncio.run(coro)
    except migrations.SchemaBehindError as exc:
        _fail(str(exc), EXIT_BEHIND)
    except ImportError as exc:  # the URL's driver is not installed
        _fail(str(exc), EXIT_USAGE)
    except (migrations.MigrationError, RuntimeError) as exc:
        # RuntimeError: a revision refusing to run (its message says why).
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        _fail(f"the database refused: {str(orig).strip().splitlines()[0]}")


def _progress(line: str) -> None:
    typer.echo(f"  {line}")


def _migrate(
    up: bool,
    url: str | None,
    revision: str,
    sql: bool,
    from_revision: str | None,
    *,
    yes: bool,
    partitions: int | None = None,
) -> None:
    # A downgrade needs the database to exist; an upgrade may create a SQLite file.
    url = _require_url(url, exists=not up and not sql)
    if partitions is not None:
        if sql:
            _fail("--partitions works on a database, not with --sql", EXIT_USAGE)
        try:
            _partitioning.check_partitions(partitions)
            _partitioning.check_backend(make_url(url).get_backend_name())
        except ValueError as exc:
            _fail(str(exc), EXIT_USAGE)
    if sql:
        if up:
            script = migrations.upgrade_sql(url, revision, from_revision=from_revision)
        elif from_revision:
            script = migrations.downgrade_sql(url, revision, from_revision=from_revision)
        else:
            _fail("downgrade --sql needs --from REVISION (the database's revision)", EXIT_USAGE)
        typer.echo(_run(script))
        return
    if not up and not yes:
        _confirm_downgrade(url, revision)
    typer.echo(f"{'Upgrading' if up else 'Downgrading'} {_shown(url)} to {revision}")
    if up:
        _run(migrations.upgrade(url, revision, progress=_progress, partitions=partitions))
    else:
        _run(migrations.downgrade(url, revision, progress=_progress))
    typer.echo(f"At revision {_run(migrations.current(url)) or 'none'}.")


def _confirm_downgrade(url: str, revision: str) -> None:
    at = _run(migrations.current(url)) or "none"
    what = (
        "removes Lattice's tables and every session in them"
        if revision == "base"
        else "may drop columns and the data in them"
    )
    question = f"Downgrade {_shown(url)} from {at} to {revision}? This {what}."
    if not sys.stdin.isatty():
        _fail(f"{question} Refusing without --yes (no terminal to ask on).")
    if not typer.confirm(question, default=False, err=True):
        _fail("nothing changed")


@db_app.command()
def upgrade(
    revision: str = typer.Argument(
        "head", metavar="REVISION", help="Target revision (default: head)."
    ),
    url: str | None = URL_OPTION,
    sql: bool = SQL_OPTION,
    from_revision: str | None = FROM_OPTION,
    partitions: int | None = typer.Option(
        None,
        "--partitions",
        metavar="N",
        help=(
            "PostgreSQL: hash-partition agent_messages by session_id into N partitions "
            "(new or empty table only; see docs/partitioning.md)."
        ),
    ),
) -> None:
    """Upgrade the database to the newest schema (or to REVISION).

    Tables made by the OpenAI Agents SDK, or by create_tables=True, are
    recognised and upgraded in place.
    """
    _migrate(True, url, revision, sql, from_revision, yes=True, partitions=partitions)


@db_app.command()
def downgrade(
    revision: str = typer.Argument(
        ..., metavar="REVISION", help="Target revision; 'base' removes Lattice's tables."
    ),
    url: str | None = URL_OPTION,
    sql: bool = SQL_OPTION,
    from_revision: str | None = FROM_OPTION,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Downgrade the database to REVISION, after a confirmation (it may drop data).

    'base' removes Lattice's tables and every session in them. Without a
    terminal to ask on, it needs --yes.
    """
    _migrate(False, url, revision, sql, from_revision, yes=yes)


@db_app.command()
def current(url: str | None = URL_OPTION) -> None:
    """Print the database's revision ('none' before the first upgrade)."""
    typer.echo(_run(migrations.current(_require_url(url, exists=True))) or "none")


@db_app.command()
def history(
    url: str | None = typer.Option(
        None,
        "--url",
        metavar="URL",
        envvar=migrations.URL_ENV_VAR,
        help="Also mark the database's current revision (optional).",
        show_default=False,
    ),
) -> None:
    """List the revisions, newest first; with --url, mark the database's one (current)."""
    at = _run(migrations.current(_require_url(url, exists=True))) if url else None
    for rev in _run(migrations.history()):
        parent = rev.down_revision or "base"
        marks = [m for m, on in (("head", rev.is_head), ("current", rev.revision == at)) if on]
        shown = f" ({', '.join(marks)})" if marks else ""
        typer.echo(f"{parent} -> {rev.revision}{shown}: {rev.doc}")
    if url and at is None:
        typer.echo("(the database is at no revision yet: run `lattice db upgrade`)")


@db_app.command()
def stamp(
    revision: str = typer.Argument(..., metavar="REVISION", help="The revision the tables are at."),
    url: str | None = URL_OPTION,
) -> None:
    """Record REVISION as the database's revision without changing any table."""
    url = _require_url(url, exists=True)
    _run(migrations.stamp(url, revision))
    typer.echo(f"Stamped {_shown(url)} at revision {revision}.")


@db_app.command()
def check(url: str | None = URL_OPTION) -> None:
    """Exit 0 if the schema is up to date, 3 if it needs `lattice db upgrade`."""
    at = _run(migrations.check(_require_url(url, exists=True)))
    typer.echo(f"Up to date: revision {at}.")


@db_app.command("repair-counts")
def repair_counts(
    url: str | None = URL_OPTION,
    check_only: bool = typer.Option(
        False, "--check", help="Only report; exit 3 when some session's count is wrong."
    ),
) -> None:
    """Recount item_count where other writers (the Agents SDK's sessions) left it wrong.

    During a rolling deploy after `lattice db upgrade`, SDK writers add and
    remove items without updating the count Lattice keeps; the items are
    intact. Run this once no SDK writer is left (see docs/deployment.md).
    """
    url = _require_url(url, exists=True)
    found = _run(maintenance.count_drift(url, repair=not check_only))
    if not found.sessions:
        typer.echo("Every session's item_count is right.")
        return
    for session_id, stored, counted in found.sessions[:10]:
        typer.echo(f"  {session_id!r}: item_count {stored}, items {counted}")
    if len(found.sessions) > 10:
        typer.echo(f"  ... and {len(found.sessions) - 10} more")
    summary = f"{len(found.sessions)} sessions had a wrong item_count ({found.items_off} items off)"
    if check_only:
        _fail(f"{summary}: run `lattice db repair-counts`", EXIT_BEHIND)
    typer.echo(f"{summary}; recounted {found.repaired}.")
