"""Backends for the test-suite: SQLite in memory, SQLite file, PostgreSQL, MySQL.

Server URLs come from ``LATTICE_TEST_POSTGRES_URL`` and
``LATTICE_TEST_MYSQL_URL`` (defaults match ``docker-compose.yml`` and the
servers on our machines). An unreachable server skips its tests, unless
``LATTICE_REQUIRE_SERVERS=1`` (set by ``.ci/run``), where it fails them.
``LATTICE_TEST_DRIVERS=other`` runs the servers through psycopg and asyncmy
instead of asyncpg and aiomysql.

Fixtures:

``backend``
    The backend name, parametrized over all four (marks ``postgres``/``mysql``).
``engine``
    A new engine on the backend; at teardown it must have no connection
    checked out, then it is disposed.
``tables``
    Fresh, uniquely named tables on ``engine`` (dropped at teardown), so tests
    and concurrent runs never see each other's rows.
``fresh_url``
    The URL of a brand-new empty database (a file for SQLite, a throwaway
    database on the servers), for tests that need the default table names.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice.engines import engine_state, make_engine
from lattice.schema import LatticeTables, lattice_tables

POSTGRES_URL = os.environ.get(
    "LATTICE_TEST_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("LATTICE_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test")
REQUIRE_SERVERS = os.environ.get("LATTICE_REQUIRE_SERVERS") == "1"
if os.environ.get("LATTICE_TEST_DRIVERS") == "other":
    # The same servers through Lattice's other drivers (`make test` runs both).
    POSTGRES_URL = (
        make_url(POSTGRES_URL)
        .set(drivername="postgresql+psycopg")
        .render_as_string(hide_password=False)
    )
    MYSQL_URL = (
        make_url(MYSQL_URL).set(drivername="mysql+asyncmy").render_as_string(hide_password=False)
    )

BACKENDS = ["sqlite_memory", "sqlite_file", "postgres", "mysql"]
SERVER_URLS = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL}
_reachable: dict[str, str | None] = {}


def _check_server(backend: str) -> None:
    """Skip (or fail, under LATTICE_REQUIRE_SERVERS=1) when the server is down."""
    if backend not in SERVER_URLS:
        return
    if backend not in _reachable:
        _reachable[backend] = asyncio.run(_probe(SERVER_URLS[backend]))
    problem = _reachable[backend]
    if problem is None:
        return
    message = f"{backend} server at {SERVER_URLS[backend]} unreachable: {problem}"
    if REQUIRE_SERVERS:
        pytest.fail(message + " (LATTICE_REQUIRE_SERVERS=1)")
    pytest.skip(message)


async def _probe(url: str) -> str | None:
    engine = make_engine(url)

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(ping(), timeout=10)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await engine.dispose()


def backend_params() -> list[object]:
    """``pytest.param`` for each backend, with the server marks."""
    marks = {"postgres": [pytest.mark.postgres], "mysql": [pytest.mark.mysql]}
    return [pytest.param(name, marks=marks.get(name, []), id=name) for name in BACKENDS]


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    _check_server(name)
    return name


@pytest.fixture
def server_backend(backend: str) -> str:
    """Only the server backends."""
    assert backend in SERVER_URLS, "deselected on SQLite by pytest_collection_modifyitems"
    return backend


def backend_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite_memory":
        return "sqlite+aiosqlite:///:memory:"
    if backend == "sqlite_file":
        return f"sqlite+aiosqlite:///{tmp_path / 'lattice.db'}"
    return SERVER_URLS[backend]


async def assert_no_checked_out(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool
    counter = getattr(pool, "checkedout", None)
    if counter is None:  # StaticPool: one connection, guarded by Lattice's lock
        lock = engine_state(engine)._use_lock
        assert lock is None or not lock.locked(), "connection left in use"
        return
    assert counter() == 0, f"{counter()} pooled connection(s) left checked out"


@pytest.fixture
async def engine(backend: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(backend_url(backend, tmp_path))
    try:
        yield eng
        await assert_no_checked_out(eng)
    finally:
        await eng.dispose()


@asynccontextmanager
async def temporary_tables(engine: AsyncEngine, prefix: str = "lt") -> AsyncIterator[LatticeTables]:
    """A fresh, uniquely named pair of tables on ``engine``, dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    made = lattice_tables(f"{prefix}{tag}_sessions", f"{prefix}{tag}_messages")
    async with engine.begin() as conn:
        await conn.run_sync(made.metadata.create_all)
    try:
        yield made
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(made.metadata.drop_all)


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncIterator[LatticeTables]:
    async with temporary_tables(engine) as made:
        yield made


@pytest.fixture
async def fresh_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A new, empty database for this test only."""
    assert backend != "sqlite_memory", "an in-memory database has no URL to share"
    if backend == "sqlite_file":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    base = make_url(SERVER_URLS[backend])
    name = f"lattice_t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name}"))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            if backend == "postgres":
                await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await admin.dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many tests ran on each backend, so a skipped server cannot hide."""
    counts = {name: {"passed": 0, "failed": 0, "skipped": 0} for name in BACKENDS}
    for outcome in ("passed", "failed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            for name in BACKENDS:
                if (
                    f"[{name}" in report.nodeid
                    or f"-{name}]" in report.nodeid
                    or f"-{name}-" in report.nodeid
                ):
                    counts[name][outcome] += 1
                    break
    terminalreporter.section("backends")
    terminalreporter.write_line(f"postgres: {POSTGRES_URL}   mysql: {MYSQL_URL}")
    for name, c in counts.items():
        terminalreporter.write_line(
            f"{name:14} {c['passed']:4} passed, {c['failed']:3} failed, {c['skipped']:3} skipped"
        )


# Fixtures that only make sense on some backends. Tests asking for them are
# not collected for the other backends at all (rather than skipped), so a
# skip in the report always means a server that could not be reached.
_FIXTURE_BACKENDS = {
    "server_backend": set(SERVER_URLS),
    "fresh_url": {"sqlite_file", *SERVER_URLS},
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "only_backends(*names): run this test on these backends only"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec else None
        allowed: set[str] = set(BACKENDS)
        for fixture, backends in _FIXTURE_BACKENDS.items():
            if fixture in getattr(item, "fixturenames", ()):
                allowed &= backends
        for mark in item.iter_markers("only_backends"):
            allowed &= set(mark.args)
        (drop if name is not None and name not in allowed else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
