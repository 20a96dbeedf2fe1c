"""``lattice db ...``: messages and exit codes, and two upgrades racing on a server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from lattice import migrations
from lattice._migration_env import _MYSQL_LOCK_NAME, _PG_LOCK_KEY
from lattice.cli import app
from lattice.cli.db import EXIT_BEHIND, EXIT_FAILED, EXIT_USAGE
from lattice.engines import make_engine

from .conftest import POSTGRES_URL, SERVER_URLS

LATTICE = str(Path(sys.executable).with_name("lattice"))


def lattice_db(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["db", *args], env=env or {})
    return result.exit_code, result.output


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


def test_upgrade_check_current_history(sqlite_url: str) -> None:
    code, out = lattice_db("upgrade", "--url", sqlite_url)
    assert code == 0, out
    head = asyncio.run(migrations.history())[0].revision
    assert "applied 0001" in out and f"At revision {head}." in out
    assert lattice_db("check", "--url", sqlite_url) == (0, f"Up to date: revision {head}.\n")
    assert lattice_db("current", env={migrations.URL_ENV_VAR: sqlite_url}) == (0, f"{head}\n")
    code, out = lattice_db("history")
    lines = out.splitlines()
    assert code == 0 and f"-> {head} (head)" in lines[0]
    assert lines[-1].startswith("base -> 0001: ") and len(lines) == len(
        asyncio.run(migrations.history())
    )


def test_check_behind_head_names_the_command(sqlite_url: str) -> None:
    assert lattice_db("upgrade", "0001", "--url", sqlite_url)[0] == 0
    code, out = lattice_db("check", "--url", sqlite_url)
    assert code == EXIT_BEHIND
    assert "revision 0001, behind" in out and "lattice db upgrade" in out
    Path(f"{sqlite_url.split(':///', 1)[1]}.empty").touch()  # an empty database
    code, out = lattice_db("check", "--url", f"{sqlite_url}.empty")
    assert code == EXIT_BEHIND and "revision none" in out


def test_downgrade_and_stamp(sqlite_url: str) -> None:
    assert lattice_db("upgrade", "--url", sqlite_url)[0] == 0
    code, out = lattice_db("downgrade", "base", "--url", sqlite_url, "--yes")
    assert code == 0 and "reverted 0001" in out and "At revision none." in out
    code, out = lattice_db("stamp", "0002", "--url", sqlite_url)
    assert code == 0 and "revision 0002" in out
    assert lattice_db("current", "--url", sqlite_url) == (0, "0002\n")


def test_no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(migrations.URL_ENV_VAR, raising=False)
    for command in ("upgrade", "current", "check"):
        code, out = lattice_db(command)
        assert code == EXIT_USAGE
        assert "no database URL: pass --url or set LATTICE_DATABASE_URL" in out
    assert lattice_db("current", "--url", "not a url")[0] == EXIT_USAGE


def test_unknown_revision(sqlite_url: str) -> None:
    code, out = lattice_db("upgrade", "nosuch", "--url", sqlite_url)
    assert code == EXIT_FAILED and "Can't locate revision identified by 'nosuch'" in out
    code, out = lattice_db("stamp", "nosuch", "--url", sqlite_url)
    assert code == EXIT_FAILED and "nosuch" in out


def test_unreachable_server() -> None:
    url = make_url(POSTGRES_URL).set(port=1).render_as_string(hide_password=False)
    code, out = lattice_db("upgrade", "--url", url)
    assert code == EXIT_FAILED
    assert "error: cannot connect to postgresql+asyncpg://" in out and ":1/" in out


def test_wrong_credentials(server_backend: str) -> None:
    """A user the server does not know: PostgreSQL names the role, MySQL denies access."""
    url = make_url(SERVER_URLS[server_backend]).set(
        username="lattice_nobody", password="wrong secret"
    )
    code, out = lattice_db("check", "--url", url.render_as_string(hide_password=False))
    assert code == EXIT_FAILED
    assert "error: cannot connect to" in out and "lattice_nobody" in out
    expected = "Access denied" if server_backend == "mysql" else "does not exist"
    assert expected in out
    assert "wrong secret" not in out  # the password is never printed


def test_offline_sql_needs_no_connection() -> None:
    # Port 1: nothing listens, so any connection attempt would fail.
    code, out = lattice_db("upgrade", "--sql", "--url", "postgresql://nobody@127.0.0.1:1/x")
    assert code == 0, out
    assert "CREATE TABLE lattice_alembic_version" in out and "CREATE TABLE agent_messages" in out
    # A %-escaped password survives Alembic's config interpolation.
    code, out = lattice_db("upgrade", "--sql", "--url", "postgresql://u:p%25w@127.0.0.1:1/x")
    assert code == 0 and "CREATE TABLE agent_sessions" in out, out
    code, out = lattice_db("downgrade", "base", "--sql", "--url", "mysql://x@127.0.0.1:1/x")
    assert code == EXIT_USAGE and "--from" in out
    code, out = lattice_db(
        "downgrade", "0001", "--sql", "--from", "0002", "--url", "mysql://x@127.0.0.1:1/x"
    )
    assert code == 0 and "DROP INDEX ix_agent_messages_session_id_id" in out


# -- two deployments starting at the same moment ------------------------------------


async def _waiting_migrators(conn: object, backend: str, database: str) -> int:
    if backend == "postgres":
        sql = (
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = :db"
        )
    else:
        sql = (
            "SELECT COUNT(*) FROM information_schema.processlist "
            "WHERE db = :db AND state = 'User lock'"
        )
    result = await conn.execute(text(sql), {"db": database})  # type: ignore[attr-defined]
    return int(result.scalar_one())


async def test_concurrent_upgrades_apply_once(fresh_url: str, server_backend: str) -> None:
    """Both processes succeed; each revision is applied by exactly one of them.

    The test holds the migration lock itself until both processes are
    waiting for it, so they really do contend, then lets them go.
    """
    database = make_url(fresh_url).database
    assert database
    engine = make_engine(fresh_url)
    try:
        async with engine.connect() as holder:
            if server_backend == "postgres":
                await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            else:
                await holder.execute(text(f"SELECT GET_LOCK({_MYSQL_LOCK_NAME}, 10)"))
            await holder.commit()
            procs = [
                await asyncio.create_subprocess_exec(
                    LATTICE,
                    "db",
                    "upgrade",
                    "--url",
                    fresh_url,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                for _ in range(2)
            ]
            async with engine.connect() as watcher:
                while await _waiting_migrators(watcher, server_backend, database) < 2:
                    assert all(p.returncode is None for p in procs), "a migrator exited early"
                    await asyncio.sleep(0.05)
                    await watcher.rollback()
            if server_backend == "postgres":
                await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            else:
                await holder.execute(text(f"SELECT RELEASE_LOCK({_MYSQL_LOCK_NAME})"))
            await holder.commit()
        outputs = [(await p.communicate())[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        everything = "".join(outputs)
        for rev in await migrations.history():
            assert everything.count(f"applied {rev.revision}:") == 1, outputs
        assert await migrations.check(engine)
    finally:
        await engine.dispose()
