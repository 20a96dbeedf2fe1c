"""``lattice sessions ...`` against real databases (SQLite file, PostgreSQL, MySQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import insert, update
from typer.testing import CliRunner

from lattice import SessionStore
from lattice.cli import app
from lattice.cli.sessions import parse_duration

runner = CliRunner()


async def lattice(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> Result:
    # The command runs its own event loop, so it goes to a thread.
    return await asyncio.to_thread(
        runner.invoke, app, ["sessions", *args], env=env, input=stdin, catch_exceptions=False
    )


@pytest.fixture
async def url(fresh_url: str) -> AsyncIterator[str]:
    """A fresh database holding five sessions: ann's a1, a2, bob's b1, and old x1, x2."""
    async with SessionStore.from_url(fresh_url, create_tables=True) as store:
        for session_id, owner in [("a1", "ann"), ("a2", "ann"), ("b1", "bob")]:
            await store.session(session_id).add_items([{"n": 1}, {"n": 2.0, "é": "ü"}])
            await store.set_metadata(session_id, {"owner": owner, "title": session_id.upper()})
        for session_id in ("x1", "x2"):
            await store.session(session_id).add_items([{"old": True}])
            s = store.tables.sessions
            async with store.engine.begin() as conn:
                await conn.execute(
                    update(s)
                    .where(s.c.session_id == session_id)
                    .values(updated_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
                )
    yield fresh_url


async def test_list_and_show(url: str) -> None:
    result = await lattice("list", "--url", url)
    assert result.exit_code == 0, result.output
    for session_id in ("a1", "a2", "b1", "x1", "x2"):
        assert session_id in result.stdout
    data = json.loads((await lattice("list", "--url", url, "--owner", "ann", "--json")).stdout)
    assert [s["session_id"] for s in data["sessions"]] == ["a2", "a1"]
    assert data["sessions"][0]["metadata"] == {"owner": "ann", "title": "A2"}
    assert data["next_cursor"] is None

    # The URL from the environment, and paging with --cursor.
    env = {"LATTICE_DATABASE_URL": url}
    first = json.loads((await lattice("list", "--limit", "2", "--json", env=env)).stdout)
    assert len(first["sessions"]) == 2 and first["next_cursor"]
    rest = json.loads(
        (
            await lattice(
                "list", "--limit", "9", "--cursor", first["next_cursor"], "--json", env=env
            )
        ).stdout
    )
    ids = [s["session_id"] for s in first["sessions"] + rest["sessions"]]
    assert sorted(ids) == ["a1", "a2", "b1", "x1", "x2"]
    meta = json.loads((await lattice("list", "--meta", "title=B1", "--json", env=env)).stdout)
    assert [s["session_id"] for s in meta["sessions"]] == ["b1"]

    shown = json.loads((await lattice("show", "a1", "--url", url, "--json")).stdout)
    assert shown["item_count"] == 2 and shown["items"] == [{"n": 1}, {"n": 2.0, "é": "ü"}]
    assert shown["unreadable_items"] == 0
    table = await lattice("show", "a1", "--url", url, "--items", "1")
    assert table.exit_code == 0 and '{"n": 2.0, "é": "ü"}' in table.stdout
    missing = await lattice("show", "nope", "--url", url)
    assert missing.exit_code == 1 and "no session 'nope'" in missing.stderr


async def test_export_import_copy(url: str, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    exported = await lattice("export", str(dump), "--url", url, "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout) == {"sessions": 5, "items": 8}
    lines = dump.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["version"] == 2 and json.loads(lines[-1])["type"] == "end"

    skipped = await lattice("import", str(dump), "--url", url, "--on-conflict", "skip", "--json")
    assert json.loads(skipped.stdout) == {
        "created": 0, "replaced": 0, "appended": 0, "skipped": 5, "items": 0,
    }  # fmt: skip
    replaced = await lattice("import", str(dump), "--url", url, "--on-conflict", "replace")
    assert replaced.exit_code == 0 and "5 replaced" in replaced.stderr

    target = f"sqlite+aiosqlite:///{tmp_path / 'copy.db'}"
    copied = await lattice(
        "copy", "--url", url, "--to", target, "--create-tables", "--owner", "ann", "--json"
    )
    assert copied.exit_code == 0, copied.output
    assert json.loads(copied.stdout)["created"] == 2
    listed = json.loads((await lattice("list", "--url", target, "--json")).stdout)
    assert [s["session_id"] for s in listed["sessions"]] == ["a2", "a1"]

    to_stdout = await lattice("export", "-", "--url", target, "--prefix", "a1")
    assert to_stdout.exit_code == 0
    assert '"session_id": "a1"' in to_stdout.stdout and '"a2"' not in to_stdout.stdout


async def test_delete_and_purge(url: str) -> None:
    refused = await lattice("delete", "--url", url, "--owner", "ann")
    assert refused.exit_code == 1 and "--yes" in refused.stderr
    deleted = await lattice("delete", "--url", url, "--owner", "ann", "--yes", "--json")
    assert json.loads(deleted.stdout) == {"sessions": 2, "items": 4}
    by_id = await lattice("delete", "b1", "nope", "--url", url, "--yes")
    # b1 is deleted; "nope" was not there, which the exit status reports (docs: 1).
    assert by_id.exit_code == 1 and "deleted 1 session, 2 items" in by_id.stderr
    assert "no session 'nope'" in by_id.stderr

    dry = await lattice("purge", "--url", url, "--older-than", "30d", "--dry-run", "--json")
    assert json.loads(dry.stdout) == {"would_delete": {"sessions": 2, "items": 2}}
    purged = await lattice("purge", "--url", url, "--older-than", "30d", "--yes", "--json")
    assert json.loads(purged.stdout) == {"sessions": 2, "items": 2}
    left = json.loads((await lattice("list", "--url", url, "--json")).stdout)
    assert left["sessions"] == []


async def test_errors_and_exit_codes(url: str, tmp_path: Path) -> None:
    no_url = await lattice("list", env={"LATTICE_DATABASE_URL": ""})
    assert no_url.exit_code == 2 and "LATTICE_DATABASE_URL" in no_url.output
    bad_age = await lattice("purge", "--url", url, "--older-than", "soon")
    assert bad_age.exit_code == 2 and "not a duration" in bad_age.output
    bad_policy = await lattice("import", "x", "--url", url, "--on-conflict", "merge")
    assert bad_policy.exit_code == 2
    no_filter = await lattice("delete", "--url", url)
    assert no_filter.exit_code == 2

    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"format": "lattice-sessions", "version": 1}\n'
        '{"type": "session", "session_id": "new", "created_at": "2024-01-01T00:00:00+00:00",'
        ' "updated_at": "2024-01-01T00:00:00+00:00", "metadata": null}\n'
        '{"type": "item", "created_at": "2024-01-01T00:00:00+00:00", "json": "[1]"}\n',
        encoding="utf-8",
    )
    rejected = await lattice("import", str(broken), "--url", url, "--on-conflict", "skip")
    assert rejected.exit_code == 1 and "line 3" in rejected.stderr
    assert "new" not in (await lattice("list", "--url", url)).stdout  # nothing written

    nowhere = str(tmp_path / "nope.jsonl")
    missing = await lattice("import", nowhere, "--url", url, "--on-conflict", "skip")
    assert missing.exit_code == 1 and "No such file" in missing.stderr

    (tmp_path / "empty.db").touch()  # a database without Lattice's tables
    empty = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    no_tables = await lattice("list", "--url", empty)
    assert no_tables.exit_code == 1 and "lattice db upgrade" in no_tables.stderr


def test_parse_duration() -> None:
    assert parse_duration("30d") == dt.timedelta(days=30)
    assert parse_duration("1.5h") == dt.timedelta(minutes=90)
    assert parse_duration(" 2w ") == dt.timedelta(weeks=2)


async def test_show_reports_rows_that_are_not_json(url: str) -> None:
    """Rows another program wrote: skipped by reads, and reported (issue 13 #9)."""
    async with SessionStore.from_url(url) as store:
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(store.tables.messages).values(session_id="a1", message_data="{oops")
            )
    shown = json.loads((await lattice("show", "a1", "--url", url, "--json")).stdout)
    assert shown["items"] == [{"n": 1}, {"n": 2.0, "é": "ü"}]
    assert shown["unreadable_items"] == 1
    table = await lattice("show", "a1", "--url", url)
    assert table.exit_code == 0 and "1 stored row(s) not valid JSON, skipped" in table.stdout
