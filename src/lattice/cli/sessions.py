"""``lattice sessions ...``: list, show, export, import, delete, purge and copy sessions.

Every command takes ``--url`` (else ``LATTICE_DATABASE_URL``). People get
tables and progress bars (on stderr); scripts get ``--json`` on stdout.

Exit codes: 0 done; 1 the work failed (database error, bad import file, no
such session, declined confirmation); 2 the command line is wrong.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError

from .. import urls
from ..errors import LatticeError
from ..sdk_parity import count_unreadable
from ..store import SessionInfo, SessionStore
from ..writes import schema_advice
from ._common import EXIT_USAGE, err_console, fail, out_console, usable_url
from ._options import _check_policy, _filters, parse_duration
from ._transfer import SideError, import_source, on_side

__all__ = ["parse_duration", "register"]

URL_ENV_VAR = "LATTICE_DATABASE_URL"
_T = TypeVar("_T")

app = typer.Typer(
    name="sessions",
    help="Inspect and manage stored sessions: list, show, export, import, delete, purge, copy.",
    no_args_is_help=True,
)
# Ids, metadata, items and error texts are user data: printed literally.
_out = out_console
_err = err_console

_URL = typer.Option(
    None,
    "--url",
    metavar="URL",
    envvar=URL_ENV_VAR,
    help=f"Database URL (default: ${URL_ENV_VAR}).",
    show_default=False,
)
_READ_URL = typer.Option(
    None,
    "--read-url",
    metavar="URL",
    help="A read replica of the database (a hot standby) to read the catalogue from.",
    show_default=False,
)
_JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")
_PREFIX = typer.Option(
    None, "--prefix", metavar="TEXT", help="Only session ids starting with this text."
)
_OWNER = typer.Option(
    None, "--owner", metavar="OWNER", help='Only sessions whose metadata "owner" is this.'
)
_YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
_ON_CONFLICT_HELP = "For a session that already exists: skip it, replace it, or append to it."
_META = typer.Option(
    None, "--meta", metavar="KEY=VALUE", help="Only sessions with metadata KEY=VALUE (repeatable)."
)
_AFTER = typer.Option(None, "--after", metavar="WHEN", help="Last active after (ISO 8601).")
_BEFORE = typer.Option(None, "--before", metavar="WHEN", help="Last active before (ISO 8601).")
_IDS = typer.Argument(None, metavar="SESSION_ID...", help="Session ids to delete.")


def register(root: typer.Typer) -> None:
    """Add the ``sessions`` command group to the ``lattice`` command."""
    root.add_typer(app, name="sessions")


_fail = fail


def _database_error(exc: DBAPIError) -> str:
    # Missing tables, or tables of an older schema (or of the Agents SDK):
    # the library's own advice (lattice db upgrade).
    advice = schema_advice(exc)
    return advice or f"database error: {str(exc.orig or exc).strip().splitlines()[0]}"


def _run(
    url: str | None,
    work: Callable[[SessionStore], Awaitable[_T]],
    read_url: str | None = None,
) -> _T:
    """Open a store on ``url``, run ``work`` on it, close it; turn failures into exit codes.

    ``read_url``: a replica the store reads its catalogue and exports from.
    """
    url = usable_url(url, env_var=URL_ENV_VAR, exists=True)
    if read_url is not None:
        read_url = usable_url(read_url, env_var=URL_ENV_VAR, option="--read-url", exists=True)

    async def main() -> _T:
        async with SessionStore.from_url(url, read_url=read_url) as store:
            return await work(store)

    try:
        return asyncio.run(main())
    except typer.Exit:
        raise
    except (ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    except ImportError as exc:  # the URL's driver is not installed
        raise _fail(str(exc), EXIT_USAGE) from None
    except DBAPIError as exc:
        raise _fail(_database_error(exc)) from None
    except LatticeError as exc:  # SchemaNotReadyError, LockTimeoutError, ...
        raise _fail(str(exc)) from None
    except SideError as exc:
        cause = exc.cause
        reason = _database_error(cause) if isinstance(cause, DBAPIError) else str(cause)
        raise _fail(f"{exc.side}: {reason}") from None
    except OSError as exc:
        raise _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields the callback the store calls with each step."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _stamp(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _sessions_table(sessions: list[SessionInfo]) -> Table:
    table = Table(show_lines=False)
    table.add_column("session id", overflow="fold")
    table.add_column("owner")
    table.add_column("items", justify="right")
    table.add_column("last active (UTC)")
    table.add_column("created (UTC)")
    table.add_column("metadata", overflow="ellipsis", max_width=40)
    for info in sessions:
        rest = {k: v for k, v in info.metadata.items() if k != "owner"}
        table.add_row(
            info.session_id,
            info.owner or "",
            str(info.item_count),
            _stamp(info.updated_at),
            _stamp(info.created_at),
            json.dumps(rest, ensure_ascii=False) if rest else "",
        )
    return table


# -- commands --------------------------------------------------------------------


@app.command("list")
def list_command(
    url: str | None = _URL,
    read_url: str | None = _READ_URL,
    prefix: str | None = _PREFIX,
    owner: str | None = _OWNER,
    meta: list[str] | None = _META,
    after: str | None = _AFTER,
    before: str | None = _BEFORE,
    limit: int = typer.Option(
        50, "--limit", metavar="N", min=1, max=1000, help="Sessions per page."
    ),
    cursor: str | None = typer.Option(
        None, "--cursor", metavar="CURSOR", help="Continue from a previous page."
    ),
    as_json: bool = _JSON,
) -> None:
    """List sessions, newest activity first, a page at a time."""
    filters = _filters(prefix, owner, meta, after, before)
    page = _run(
        url, lambda store: store.list_sessions(limit=limit, cursor=cursor, **filters), read_url
    )
    if as_json:
        _print_json(
            {"sessions": [i.to_dict() for i in page.sessions], "next_cursor": page.next_cursor}
        )
        return
    if not page.sessions:
        _err.print("no sessions")
        return
    _out.print(_sessions_table(page.sessions))
    if page.next_cursor:
        _err.print(f"more: add --cursor {page.next_cursor}")


@app.command("show")
def show_command(
    session_id: str = typer.Argument(..., metavar="SESSION_ID", help="The session id."),
    url: str | None = _URL,
    read_url: str | None = _READ_URL,
    items: int = typer.Option(
        20, "--items", metavar="N", min=0, help="How many of the latest items."
    ),
    as_json: bool = _JSON,
) -> None:
    """Show one session: its catalogue row and its latest items."""

    unreadable = 0

    async def work(store: SessionStore) -> tuple[SessionInfo | None, list[dict[str, Any]]]:
        nonlocal unreadable
        info = await store.get_info(session_id)
        if info is None:
            return None, []
        with count_unreadable() as box:
            latest = await store.session(session_id).get_items(limit=items) if items else []
        unreadable = box[0]
        return info, cast("list[dict[str, Any]]", latest)

    info, latest = _run(url, work, read_url)
    if info is None:
        if as_json:
            _print_json(None)  # scripts read null; the exit status is 1
        raise _fail(f"no session {session_id!r}")
    if as_json:
        _print_json({**info.to_dict(), "items": latest, "unreadable_items": unreadable})
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("session id", info.session_id)
    table.add_row("items", str(info.item_count))
    table.add_row("created (UTC)", _stamp(info.created_at))
    table.add_row("last active (UTC)", _stamp(info.updated_at))
    table.add_row("metadata", json.dumps(info.metadata, ensure_ascii=False, indent=1))
    if unreadable:
        # Rows another program wrote that are not JSON: reads skip them.
        table.add_row("unreadable", f"{unreadable} stored row(s) not valid JSON, skipped")
    _out.print(table)
    if latest:
        shown = f"latest {len(latest)} of {info.item_count}"
        _out.print(Text.assemble("\n", ("items", "bold"), f" ({shown}, oldest first)"))
        for item in latest:
            _out.print(json.dumps(item, ensure_ascii=False))


@app.command("export")
def export_command(
    output: str = typer.Argument(
        "-", metavar="FILE", help="File to write, or - for standard output."
    ),
    url: str | None = _URL,
    read_url: str | None = _READ_URL,
    prefix: str | None = _PREFIX,
    owner: str | None = _OWNER,
    meta: list[str] | None = _META,
    after: str | None = _AFTER,
    before: str | None = _BEFORE,
    as_json: bool = _JSON,
) -> None:
    """Export sessions as JSON Lines (format version 1; see docs/store.md)."""
    filters = _filters(prefix, owner, meta, after, before)

    async def work(store: SessionStore) -> Any:
        _sessions, total = await store.totals(**filters)
        with _progress("exporting items", total) as step:
            target: Any = sys.stdout if output == "-" else output
            return await store.export_jsonl(target, progress=step, **filters)

    result = _run(url, work, read_url)
    summary = {"sessions": result.sessions, "items": result.items}
    if as_json and output != "-":
        _print_json(summary)
    else:
        where = "standard output" if output == "-" else output
        _err.print(f"exported {_counted(summary)} to {where}")


@app.command("import")
def import_command(
    source: str = typer.Argument(
        ...,
        metavar="FILE",
        help="A file written by `lattice sessions export` (gzip too), or - for standard input.",
    ),
    on_conflict: str = typer.Option(
        ..., "--on-conflict", metavar="skip|replace|append", help=_ON_CONFLICT_HELP
    ),
    url: str | None = _URL,
    as_json: bool = _JSON,
) -> None:
    """Import sessions from a JSON Lines export; the file is checked before anything is written."""
    policy = _check_policy(on_conflict)

    async def work(store: SessionStore) -> Any:
        with import_source(source) as (handle, total), _progress("importing items", total) as step:
            return await store.import_jsonl(handle, on_conflict=policy, progress=step)

    result = _run(url, work)
    _report_import(result.to_dict(), as_json)


def _report_import(counts: dict[str, int], as_json: bool) -> None:
    if as_json:
        _print_json(counts)
        return
    _err.print(
        "sessions: {created} created, {replaced} replaced, {appended} appended, "
        "{skipped} skipped; {items} items written".format(**counts)
    )


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise _fail("refusing to delete without --yes (no terminal to ask on)")
    if not typer.confirm(question, default=False, err=True):
        raise _fail("nothing deleted")


@app.command("delete")
def delete_command(
    session_ids: list[str] | None = _IDS,
    url: str | None = _URL,
    owner: str | None = _OWNER,
    prefix: str | None = _PREFIX,
    yes: bool = _YES,
    as_json: bool = _JSON,
) -> None:
    """Delete sessions by id, or every session of an --owner or id --prefix."""
    if not session_ids and owner is None and prefix is None:
        raise typer.BadParameter("give session ids, --owner or --prefix")
    if session_ids and (owner is not None or prefix is not None):
        raise typer.BadParameter("give session ids or a filter (--owner/--prefix), not both")

    missing: list[str] = []

    async def work(store: SessionStore) -> dict[str, int]:
        if session_ids:
            total = {"sessions": 0, "items": 0}
            for session_id in session_ids:
                done = await store.delete_session(session_id)
                total["sessions"] += done.sessions
                total["items"] += done.items
                if not done.sessions:
                    missing.append(session_id)
            return total
        count = await store.count(owner=owner, prefix=prefix)
        if count:
            _confirm(f"delete {count} sessions?", yes)
        with _progress("deleting sessions", count) as step:
            done = await store.delete_sessions(owner=owner, prefix=prefix, progress=step)
        return {"sessions": done.sessions, "items": done.items}

    if session_ids:
        _confirm(f"delete {len(session_ids)} session(s)?", yes)
    _report_deleted(_run(url, work), as_json)
    if missing:  # the others are deleted; the exit status says not all were there
        raise _fail(f"no session {', '.join(repr(m) for m in missing)}")


def _counted(counts: dict[str, int]) -> str:
    """ "1 session, 2 items": the counts with their nouns in the right number."""
    sessions, items = counts["sessions"], counts["items"]
    return (
        f"{sessions} session{'' if sessions == 1 else 's'}, {items} item{'' if items == 1 else 's'}"
    )


def _report_deleted(counts: dict[str, int], as_json: bool) -> None:
    if as_json:
        _print_json(counts)
    else:
        _err.print(f"deleted {_counted(counts)}")


@app.command("purge")
def purge_command(
    older_than: str = typer.Option(
        ...,
        "--older-than",
        metavar="AGE",
        help="Idle for longer than this: 45s, 90m, 12h, 30d, 2w.",
    ),
    url: str | None = _URL,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would go."),
    yes: bool = _YES,
    as_json: bool = _JSON,
) -> None:
    """Delete sessions with no activity for longer than --older-than."""
    age = parse_duration(older_than)

    async def work(store: SessionStore) -> dict[str, int]:
        cutoff = dt.datetime.now(dt.timezone.utc) - age
        sessions, items = await store.totals(updated_before=cutoff)
        if dry_run or not sessions:
            return {"sessions": sessions, "items": items, "dry_run": int(dry_run)}
        _confirm(f"delete {sessions} sessions idle since before {_stamp(cutoff)} UTC?", yes)
        with _progress("purging sessions", sessions) as step:
            done = await store.delete_sessions(updated_before=cutoff, progress=step)
        return {"sessions": done.sessions, "items": done.items}

    counts = _run(url, work)
    if counts.pop("dry_run", 0):
        if as_json:
            _print_json({"would_delete": counts})
        else:
            _err.print(f"would delete {_counted(counts)}")
        return
    _report_deleted(counts, as_json)


@app.command("copy")
def copy_command(
    to: str = typer.Option(..., "--to", metavar="URL", help="URL of the database to copy into."),
    url: str | None = _URL,
    on_conflict: str = typer.Option(
        "skip", "--on-conflict", metavar="skip|replace|append", help=_ON_CONFLICT_HELP
    ),
    prefix: str | None = _PREFIX,
    owner: str | None = _OWNER,
    meta: list[str] | None = _META,
    after: str | None = _AFTER,
    before: str | None = _BEFORE,
    create_tables: bool = typer.Option(
        False, "--create-tables", help="Create the tables in the target if missing."
    ),
    as_json: bool = _JSON,
) -> None:
    """Copy sessions to another database (for example SQLite to PostgreSQL)."""
    policy = _check_policy(on_conflict)
    to = usable_url(to, env_var=URL_ENV_VAR, option="--to", exists=not create_tables)
    filters = _filters(prefix, owner, meta, after, before)
    if url and urls.same_database(url, to):
        # Two engines on one database: the store cannot tell, and "append"
        # would double every session ("skip" and "replace" do nothing useful).
        raise typer.BadParameter("the source (--url) and the target are the same database")

    async def work(store: SessionStore) -> Any:
        async with on_side("the source (--url)"):
            _sessions, total = await store.totals(**filters)
        async with SessionStore.from_url(to, create_tables=create_tables) as target:
            async with on_side("the target (--to)"):
                await target.count()  # reachable, and its tables exist (or were created)
            with _progress("copying items", total) as step:
                return await store.copy_to(target, on_conflict=policy, progress=step, **filters)

    result = _run(url, work)
    _report_import(result.to_dict(), as_json)
