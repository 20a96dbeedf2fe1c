"""Issue 16, the parts beyond the CLI's messages: engines, counts, Alembic, API nits.

Each test runs real commands (``lattice`` through typer's runner, Alembic,
scripts in a subprocess) against real databases.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lattice import SessionStore, SQLAlchemySession, migrations

from .conftest import backend_url
from .test_cli_newuser import assert_clean_error, lattice, run

# -- 11. a forgotten dispose_engines() is harmless ---------------------------------

FORGETFUL_SCRIPT = """
import asyncio, sys
from lattice import SQLAlchemySession

async def main():
    session = SQLAlchemySession.from_url("s", url=sys.argv[1], create_tables=True)
    await session.add_items([{"n": 1}])
    print(len(await session.get_items()))

asyncio.run(main())   # no dispose_engines()
"""


def test_forgotten_dispose_is_done_when_the_loop_ends(fresh_url: str, tmp_path: Path) -> None:
    engines = []

    async def main() -> None:
        session = SQLAlchemySession.from_url("s", url=fresh_url, create_tables=True)
        await session.add_items([{"n": 1}])
        engines.append(session.engine)

    asyncio.run(main())
    assert engines[0].sync_engine.pool.checkedin() == 0, "the loop's engine kept connections"

    script = tmp_path / "forgetful.py"
    script.write_text(FORGETFUL_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), fresh_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout == "2\n", done.stderr
    assert done.stderr == "", done.stderr  # no "Exception ignored ... Event loop is closed"


# -- 13. SDK writers after the upgrade: detect and repair item_count --------------


async def test_repair_counts_after_sdk_writers(fresh_url: str) -> None:
    from agents.extensions.memory import SQLAlchemySession as SDKSession

    assert (await lattice("db", "upgrade", "--url", fresh_url)).exit_code == 0
    async with SessionStore.from_url(fresh_url) as store:
        await store.session("both").add_items([{"n": n} for n in range(3)])
        await store.session("[bold]lattice-only").add_items([{"n": 1}])
        # An SDK writer of the old deployment, still running on the upgraded tables.
        sdk_both = SDKSession("both", engine=store.engine)
        await sdk_both.add_items([{"sdk": 1}, {"sdk": 2}])
        sdk_only = SDKSession("sdk-only", engine=store.engine)
        await sdk_only.add_items([{"sdk": n} for n in range(4)])
        assert await sdk_only.pop_item() == {"sdk": 3}

        check = await lattice("db", "repair-counts", "--check", "--url", fresh_url)
        assert_clean_error(check, 3, "2 sessions had a wrong item_count", "'both': item_count 3")
        assert "lattice-only" not in check.output
        assert (await store.get_info("both")).item_count == 3  # --check wrote nothing

        repaired = await lattice("db", "repair-counts", "--url", fresh_url)
        assert repaired.exit_code == 0 and "recounted 2" in repaired.output, repaired.output
        assert (await store.get_info("both")).item_count == 5
        assert (await store.get_info("sdk-only")).item_count == 3
        assert (await store.get_info("[bold]lattice-only")).item_count == 1
        assert await store.session("both").get_items() == [
            *({"n": n} for n in range(3)),
            {"sdk": 1},
            {"sdk": 2},
        ]
    again = await lattice("db", "repair-counts", "--check", "--url", fresh_url)
    assert again.exit_code == 0 and "right" in again.output


# -- 14. the documented application env.py: no side effects, an offline branch ----


def test_documented_env_py_has_no_side_effects(
    fresh_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import alembic
    from alembic import command

    from .test_migrations_adopt import application_alembic

    config = application_alembic(fresh_url, tmp_path, monkeypatch)
    scripts = tmp_path / "app_migrations"
    template = Path(alembic.__file__).parent / "templates" / "async" / "script.py.mako"
    (scripts / "script.py.mako").write_text(template.read_text())

    command.upgrade(config, "head", sql=True)  # offline: prints, connects to nothing
    assert "app_notes" in capsys.readouterr().out
    assert asyncio.run(migrations.current(fresh_url)) is None

    command.upgrade(config, "head")
    head = asyncio.run(migrations.history())[0].revision
    assert asyncio.run(migrations.current(fresh_url)) == head
    # Autogenerate after the upgrade: nothing to add, and Lattice's schema untouched.
    assert run("db", "downgrade", "0002", "--url", fresh_url, "--yes").exit_code == 0
    command.revision(config, message="nothing", autogenerate=True)
    assert asyncio.run(migrations.current(fresh_url)) == "0002", "autogenerate upgraded Lattice"
    written = [p for p in (scripts / "versions").glob("*.py") if "nothing" in p.name]
    assert len(written) == 1 and "op.create_table" not in written[0].read_text()


# -- nits --------------------------------------------------------------------------


async def test_from_url_takes_engine_kwargs_the_same_way(backend: str, tmp_path: Path) -> None:
    url = backend_url(backend, tmp_path)
    # One option every pool takes (StaticPool has no size); nothing runs, nothing logs.
    async with SessionStore.from_url(url, engine_kwargs={"echo": True}) as store:
        assert store.engine.echo is True
    async with SessionStore.from_url(url, echo=True) as store:
        assert store.engine.echo is True
    session = SQLAlchemySession.from_url("x", url=url, engine_kwargs={"echo": True})
    assert session.engine.echo is True
    import lattice

    for name in ("SessionInfo", "SessionPage", "DeleteResult", "ExportResult", "ImportResult"):
        assert getattr(lattice, name).__name__ == name


async def test_cli_counts_missing_sessions_and_grammar(fresh_url: str) -> None:
    async with SessionStore.from_url(fresh_url, create_tables=True) as store:
        await store.session("one").add_items([{"n": 1}])
        await store.session("two").add_items([{"n": 1}, {"n": 2}])
        with pytest.raises(TypeError, match="item 0 is an int, but items must be dicts"):
            await store.session("one").add_items([1])
    shown = await lattice("sessions", "show", "nope", "--json", "--url", fresh_url)
    assert shown.exit_code == 1 and shown.stdout == "null\n"
    deleted = await lattice("sessions", "delete", "one", "nope", "--yes", "--url", fresh_url)
    assert_clean_error(deleted, 1, "deleted 1 session, 1 item", "no session 'nope'")
    dry = await lattice("sessions", "purge", "--older-than", "0s", "--dry-run", "--url", fresh_url)
    assert dry.exit_code == 0 and "would delete 1 session, 2 items" in dry.output
