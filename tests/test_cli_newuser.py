"""What a new user hit (issue 16) and URL/CLI edges (issue 12, findings 12-13), end to end.

Each test runs the real ``lattice`` command (typer's runner, or the console
script in a subprocess) against real databases.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from click.testing import Result
from sqlalchemy import text
from typer.testing import CliRunner

from lattice import SessionStore, migrations, urls
from lattice.cli import app
from lattice.cli._transfer import import_source

from .conftest import MYSQL_URL, POSTGRES_URL

runner = CliRunner()
LATTICE = Path(sys.executable).with_name("lattice")


async def lattice(*args: str, stdin: str | None = None) -> Result:
    # The command runs its own event loop, so it goes to a thread.
    return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin)


def run(*args: str, stdin: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=stdin)


def assert_clean_error(result: Result, code: int, *needles: str) -> None:
    """Exit ``code`` with one short message and no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "╭─ Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    for needle in needles:
        assert needle in result.output, (needle, result.output)


# -- 1. user data is printed literally, never as Rich markup -------------------


HOSTILE_ID = "[bold]vip"
HOSTILE_OWNER = "ann[/]"
HOSTILE_ITEM = {"text": "[red]alert[/red] :smile: [link=http://x]y[/link]"}


async def test_user_data_is_printed_literally(fresh_url: str) -> None:
    async with SessionStore.from_url(fresh_url, create_tables=True) as store:
        await store.session(HOSTILE_ID).add_items([HOSTILE_ITEM])
        await store.set_metadata(HOSTILE_ID, {"owner": HOSTILE_OWNER, "note": "[/x]"})
    listed = await lattice("sessions", "list", "--url", fresh_url)
    assert listed.exit_code == 0, listed.output
    assert HOSTILE_ID in listed.stdout and HOSTILE_OWNER in listed.stdout
    assert "[/x]" in listed.stdout

    shown = await lattice("sessions", "show", HOSTILE_ID, "--url", fresh_url)
    assert shown.exit_code == 0, shown.output
    assert HOSTILE_ID in shown.stdout
    assert json.dumps(HOSTILE_ITEM) in shown.stdout

    missing = await lattice("sessions", "show", "chat[/x]", "--url", fresh_url)
    assert_clean_error(missing, 1, "no session 'chat[/x]'")

    by_owner = await lattice("sessions", "list", "--owner", HOSTILE_OWNER, "--url", fresh_url)
    assert by_owner.exit_code == 0 and HOSTILE_ID in by_owner.stdout


def test_error_hints_keep_their_brackets(tmp_path: Path) -> None:
    # A missing-driver style hint holds "[mysql]"; an error message is literal.
    result = run("sessions", "list", "--url", f"sqlite:///{tmp_path / 'x[mysql].db'}")
    assert_clean_error(result, 1, "x[mysql].db")


# -- 2. libpq-style URLs ---------------------------------------------------------


def _pg(query: str) -> str:
    base = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    return f"{base}?{query}"


@pytest.mark.only_backends("postgres")
async def test_libpq_parameters_reach_asyncpg(backend: str) -> None:
    # What providers hand out: a plain postgresql:// URL with libpq parameters.
    url = _pg(
        "sslmode=prefer&application_name=lattice-t16&connect_timeout=7"
        "&options=-c%20statement_timeout%3D4321"
    )
    async with SessionStore.from_url(url) as store, store.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT current_setting('application_name'), "
                    "current_setting('statement_timeout')"
                )
            )
        ).one()
    assert tuple(row) == ("lattice-t16", "4321ms")
    # The same URL works for the CLI (db current needs only a connection).
    result = await lattice("db", "current", "--url", url)
    assert result.exit_code == 0, result.output


@pytest.mark.only_backends("postgres")
async def test_sslmode_require_is_honoured(backend: str) -> None:
    # The test server has no TLS: sslmode=require must reach asyncpg and fail
    # there with one line, not with "unexpected keyword argument 'sslmode'".
    result = await lattice("sessions", "list", "--url", _pg("sslmode=require"))
    assert_clean_error(result, 1, "SSL")
    assert "unexpected keyword" not in result.output
    disabled = await lattice("db", "current", "--url", _pg("sslmode=disable"))
    assert disabled.exit_code == 0, disabled.output


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("channel_binding=require", "channel_binding=require is not supported with asyncpg"),
        ("sslmode=bogus", "sslmode=bogus: use one of disable, allow, prefer"),
        ("connect_timeout=soon", "connect_timeout=soon: give seconds"),
    ],
)
def test_libpq_parameters_asyncpg_cannot_take(query: str, needle: str) -> None:
    for command in (["db", "current"], ["sessions", "list"]):
        result = run(*command, "--url", _pg(query))
        assert_clean_error(result, 2, needle)


def test_mysql_tls_parameters_become_an_ssl_context(tmp_path: Path) -> None:
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    url, kwargs = urls.connect_options(
        urls.normalize(f"mysql://app@db.example.com/agents?ssl_ca={ca}&ssl_check_hostname=false"),
        {},
    )
    context = kwargs["connect_args"]["ssl"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED and not url.query
    missing = tmp_path / "nope.pem"
    result = run("sessions", "list", "--url", f"mysql://app@127.0.0.1/test?ssl_ca={missing}")
    assert_clean_error(result, 2, "cannot load the TLS files")


@pytest.mark.only_backends("mysql")
async def test_mysql_url_with_tls_parameters_connects(backend: str) -> None:
    # The test server offers no TLS. The URL's parameters reach the driver
    # either way; aiomysql then connects in clear, asyncmy refuses with an SSL
    # error (both as docs/deployment.md says).
    ca = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    url = f"{MYSQL_URL}?ssl_ca={ca}&ssl_check_hostname=false"
    result = await lattice("db", "current", "--url", url)
    if MYSQL_URL.startswith("mysql+asyncmy"):
        assert result.exit_code == 1 and "SSL" in result.output, result.output
        assert "Traceback" not in result.output
    else:
        assert result.exit_code == 0, result.output


# -- issue 12 finding 12: passwords never shown ----------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg//app:s3cr3t-pw@db.example.com/app",
        "postgresql+asyncpg:app:s3cr3t-pw@db.example.com/app",
        "oracle+oracledb://app:s3cr3t-pw@db.example.com/app",
        "postgresql://app@127.0.0.1:99999/app?password=s3cr3t-pw",
        "postgresql://app:s3cr3t-pw@127.0.0.1:99999/app",
        "postgresql://app@127.0.0.1/app?password=s3cr3t-pw&channel_binding=require",
    ],
)
def test_passwords_are_hidden_everywhere(url: str) -> None:
    for command in (["db", "upgrade"], ["db", "check"], ["sessions", "list"]):
        result = run(*command, "--url", url)
        assert result.exit_code == 2, (command, result.output)
        assert "s3cr3t-pw" not in result.output, (command, result.output)
        assert "***" in result.output or "oracle" in result.output
    with pytest.raises(ValueError) as caught:
        SessionStore.from_url(url)
    assert "s3cr3t-pw" not in str(caught.value)


@pytest.mark.only_backends("postgres")
def test_password_in_query_hidden_when_shown(backend: str) -> None:
    url = _pg("password=s3cr3t-pw&sslmode=disable")
    result = run("db", "upgrade", "--url", url, "--sql")
    assert result.exit_code == 0
    stamped = run("db", "history", "--url", url)
    assert stamped.exit_code == 0 and "s3cr3t-pw" not in stamped.output
    store = SessionStore.from_url(url)
    assert "s3cr3t-pw" not in repr(store)


# -- 6. drivers and databases Lattice cannot use: one line, exit 2 --------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql+psycopg2://u@h/db", "write postgresql+asyncpg://"),
        ("mysql+pymysql://root@127.0.0.1/test", "write mysql+aiomysql://"),
        ("sqlite+pysqlite:///x.db", "write sqlite+aiosqlite://"),
        ("oracle+oracledb://u@h/db", "not 'oracle'"),
        ("postgresql://u@127.0.0.1:99999/db", "port 99999 is out of range"),
        ("postgresql://u@127.0.0.1:0/db", "port 0 is out of range"),
        ("mysql://u@h:port/db", "not a database URL"),
    ],
)
def test_unusable_urls_exit_2(url: str, needle: str) -> None:
    for command in (["db", "upgrade"], ["db", "current"], ["sessions", "list"]):
        assert_clean_error(run(*command, "--url", url), 2, needle)
    result = run("sessions", "copy", "--url", "sqlite:///:memory:", "--to", url)
    assert_clean_error(result, 2, needle)


# -- issue 12 finding 13: options out of range ----------------------------------


@pytest.mark.parametrize("age", ["99999999d", "999999999999w", f"{'9' * 400}s"])
async def test_purge_age_out_of_range_exits_2(fresh_url: str, age: str) -> None:
    async with SessionStore.from_url(fresh_url, create_tables=True) as store:
        await store.session("keep").add_items([{"n": 1}])
    result = await lattice("sessions", "purge", "--older-than", age, "--url", fresh_url, "-y")
    assert_clean_error(result, 2, "reaches back before the year 1")
    async with SessionStore.from_url(fresh_url) as store:
        assert await store.count() == 1


# -- issue 12 finding 13: an interrupted export leaves no .partial file --------


@pytest.mark.only_backends("sqlite_file")
async def test_terminated_export_leaves_no_partial_file(fresh_url: str, tmp_path: Path) -> None:
    async with SessionStore.from_url(fresh_url, create_tables=True) as store:
        for n in range(60):
            await store.session(f"s{n}").add_items([{"t": "x" * 2000}] * 200)
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    proc = subprocess.Popen(
        [str(LATTICE), "sessions", "export", str(out), "--url", fresh_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert partial.exists(), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 130, (proc.returncode, "finished before the signal? make it bigger")
    assert not partial.exists(), "an interrupted export left its .partial file"
    assert not out.exists()
    assert b"Traceback" not in stderr


# -- 7. read-only commands never create a SQLite file ----------------------------


def test_read_only_commands_do_not_create_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    url = f"sqlite+aiosqlite:///{missing}"
    for command in (
        ["db", "current"],
        ["db", "check"],
        ["db", "history"],
        ["db", "stamp", "head"],
        ["db", "downgrade", "base", "--yes"],
        ["db", "repair-counts", "--check"],
        ["sessions", "list"],
        ["sessions", "show", "x"],
        ["sessions", "export", str(tmp_path / "out.jsonl")],
        ["sessions", "delete", "x", "--yes"],
        ["sessions", "purge", "--older-than", "1d", "--yes"],
    ):
        result = run(*command, "--url", url)
        assert_clean_error(result, 1, f"no SQLite database at '{missing}'")
        assert not missing.exists(), command
    result = run("sessions", "copy", "--url", "sqlite:///:memory:", "--to", url)
    assert_clean_error(result, 1, "no SQLite database")
    assert not missing.exists()


# -- 5. downgrade asks; history takes --url -------------------------------------


async def test_downgrade_needs_confirmation_and_history_marks_current(fresh_url: str) -> None:
    assert (await lattice("db", "upgrade", "--url", fresh_url)).exit_code == 0
    head = (await migrations.history())[0].revision
    refused = await lattice("db", "downgrade", "base", "--url", fresh_url)
    assert_clean_error(refused, 1, "removes Lattice's tables", "--yes")
    assert await migrations.current(fresh_url) == head

    history = await lattice("db", "history", "--url", fresh_url)
    assert history.exit_code == 0, history.output
    assert f"-> {head} (head, current):" in history.stdout

    done = await lattice("db", "downgrade", "0001", "--url", fresh_url, "--yes")
    assert done.exit_code == 0, done.output
    history = await lattice("db", "history", "--url", fresh_url)
    assert "-> 0001 (current):" in history.stdout


# -- 3. the CLI reference lists every command and option --------------------------


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    if hasattr(command, "list_commands"):
        for name in command.list_commands(None):
            yield from _commands(command.get_command(None, name), [*path, name])
    else:
        yield path, command


def test_cli_reference_lists_every_command_option_and_exit_code() -> None:
    page = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = page.split("\n### ")
    seen = 0
    for path, command in _commands(typer.main.get_command(app), ["lattice"]):
        heading = f"`{' '.join(path)}`"
        section = next((s for s in sections if s.startswith(heading)), None)
        assert section is not None, f"docs/cli.md has no section {heading}"
        for param in command.params:
            if param.name == "help":
                continue
            names = param.opts if param.param_type_name == "option" else [param.metavar]
            for name in names:
                assert f"`{name}`" in section, f"{heading} does not document {name}"
        seen += 1
    assert seen >= 14
    for code in ("`0`", "`1`", "`2`", "`3`", "`130`"):
        assert f"| {code} |" in page


def test_help_shows_no_bool_metavar() -> None:
    for path, _command in _commands(typer.main.get_command(app), []):
        result = run(*path, "--help")
        assert result.exit_code == 0 and "<bool>" not in result.output, path


# -- 8. errors that say what to run -----------------------------------------------


async def test_schema_errors_name_the_upgrade(fresh_url: str) -> None:
    async with SessionStore.from_url(fresh_url, create_tables=True) as store:
        await store.session("s").add_items([{"n": 1}])
    check = await lattice("db", "check", "--url", fresh_url)
    assert_clean_error(check, 3, "exist without a Lattice revision", "lattice db upgrade")


async def test_list_on_an_older_schema_names_the_upgrade(fresh_url: str) -> None:
    assert (await lattice("db", "upgrade", "0002", "--url", fresh_url)).exit_code == 0
    listed = await lattice("sessions", "list", "--url", fresh_url)
    assert_clean_error(listed, 1, "run `lattice db upgrade`")


# -- 9. import from standard input and gzip; filters on export and copy ----------


async def _two_owners(url: str) -> None:
    async with SessionStore.from_url(url, create_tables=True) as store:
        for sid, owner, tier in [("a1", "ann", "pro"), ("a2", "ann", "free"), ("b1", "bob", "pro")]:
            await store.session(sid).add_items([{"n": 1}, {"n": 2}])
            await store.set_metadata(sid, {"owner": owner, "tier": tier})


async def test_import_reads_stdin_and_gzip(fresh_url: str, tmp_path: Path) -> None:
    await _two_owners(fresh_url)
    dump = tmp_path / "dump.jsonl"
    assert (await lattice("sessions", "export", str(dump), "--url", fresh_url)).exit_code == 0
    text_dump = dump.read_text(encoding="utf-8")
    packed = tmp_path / "dump.jsonl.gz"
    packed.write_bytes(gzip.compress(dump.read_bytes()))

    for n, (source, stdin) in enumerate([("-", text_dump), (str(packed), None)]):
        target = f"sqlite+aiosqlite:///{tmp_path / f'target{n}.db'}"
        async with SessionStore.from_url(target, create_tables=True) as store:
            await store.count()
        args = ["sessions", "import", source, "--url", target, "--on-conflict", "skip", "--json"]
        result = await lattice(*args, stdin=stdin)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["created"] == 3 and json.loads(result.stdout)["items"] == 6

    with import_source(str(packed)) as (_handle, total):
        assert total == 6  # the progress bar's total, from the file's end line

    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(dump.read_bytes())[:40])
    result = await lattice(
        "sessions", "import", str(broken), "--url", fresh_url, "--on-conflict", "skip"
    )
    assert_clean_error(result, 1, "a damaged gzip file")
    # The library names the problem too, not the codec.
    async with SessionStore.from_url(fresh_url) as store:
        with pytest.raises(ValueError, match="not a Lattice export: line 1 is not UTF-8"):
            await store.import_jsonl(packed, on_conflict="skip")


async def test_export_and_copy_take_the_list_filters(fresh_url: str, tmp_path: Path) -> None:
    await _two_owners(fresh_url)
    dump = tmp_path / "pro.jsonl"
    result = await lattice(
        "sessions", "export", str(dump), "--url", fresh_url, "--meta", "tier=pro", "--json"
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["sessions"] == 2
    sessions = [json.loads(line) for line in dump.read_text().splitlines()]
    assert sorted(r["session_id"] for r in sessions if r.get("type") == "session") == ["a1", "b1"]
    none = await lattice(
        "sessions", "export", "-", "--url", fresh_url, "--after", "2999-01-01", "--json"
    )
    assert none.exit_code == 0 and '"type": "session"' not in none.stdout

    target = f"sqlite+aiosqlite:///{tmp_path / 'copy.db'}"
    copied = await lattice(
        "sessions", "copy", "--url", fresh_url, "--to", target, "--create-tables",
        "--meta", "tier=pro", "--owner", "bob", "--before", "2999-01-01", "--json",
    )  # fmt: skip
    assert copied.exit_code == 0, copied.output
    assert json.loads(copied.stdout)["created"] == 1


# -- 10. copy: which side failed; never onto its own database --------------------


async def test_copy_names_the_failing_side_and_refuses_its_own_database(
    fresh_url: str, tmp_path: Path
) -> None:
    await _two_owners(fresh_url)
    for to in (fresh_url, fresh_url.replace("127.0.0.1", "localhost")):
        result = await lattice(
            "sessions", "copy", "--url", fresh_url, "--to", to, "--on-conflict", "append"
        )
        assert_clean_error(result, 2, "the source (--url) and the target are the same database")
    async with SessionStore.from_url(fresh_url) as store:
        assert (await store.totals()) == (3, 6)  # nothing doubled

    empty = tmp_path / "empty.db"
    empty.touch()  # a database without tables, as a target ...
    empty_url = f"sqlite+aiosqlite:///{empty}"
    result = await lattice("sessions", "copy", "--url", fresh_url, "--to", empty_url)
    assert_clean_error(result, 1, "the target (--to):", "lattice db upgrade")
    # ... and as a source.
    result = await lattice("sessions", "copy", "--url", empty_url, "--to", fresh_url)
    assert_clean_error(result, 1, "the source (--url):", "lattice db upgrade")
    unreachable = "postgresql://nobody@127.0.0.1:1/nothing"
    result = await lattice("sessions", "copy", "--url", fresh_url, "--to", unreachable)
    assert_clean_error(result, 1, "the target (--to):")
