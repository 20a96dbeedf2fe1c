"""Adopting existing tables, and living inside the application's own Alembic env.

* A database written by the real ``openai-agents`` ``SQLAlchemySession``
  (``create_tables=True``) is upgraded in place by ``lattice.migrations.upgrade``
  and every item reads back, in order, through Lattice. The SDK cannot create
  its tables on MySQL, so there the baseline tables are made by revision 0001
  and its version table removed, as a hand-made database would be.
* An application's Alembic ``env.py`` (the one in ``docs/deployment.md``) runs
  its own revisions and Lattice's on one connection; each history keeps its
  own version table and the application's autogenerate ignores Lattice's tables.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from lattice import SQLAlchemySession, migrations
from lattice.engines import make_engine

from .test_migrations import table_names

REPO = Path(__file__).resolve().parent.parent

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "alice": [
        {"role": "user", "content": "Bonjour, ça va ? 👋"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Très bien."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "2"},
    ],
    "bob": [{"role": "user", "content": f"message {i}"} for i in range(7)],
    "bob ": [{"role": "user", "content": "a different session: trailing space"}],
}


async def write_with_the_sdk(url: str, backend: str) -> dict[str, list[dict[str, Any]]]:
    """Write the conversations with the Agents SDK; return what it reads back."""
    from agents.extensions.memory import SQLAlchemySession as SDKSession

    if backend == "mysql":
        await migrations.upgrade(url, "0001")
        engine = make_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {migrations.VERSION_TABLE}"))
    else:
        engine = make_engine(url)
    try:
        sessions = {
            sid: SDKSession(sid, engine=engine, create_tables=backend != "mysql")
            for sid in CONVERSATIONS
        }
        # Interleave the sessions, so their rows interleave in the messages table.
        for i in range(max(len(items) for items in CONVERSATIONS.values())):
            for sid, items in CONVERSATIONS.items():
                if i < len(items):
                    await sessions[sid].add_items([items[i]])
        assert await sessions["bob"].pop_item() == CONVERSATIONS["bob"][-1]
        return {sid: await session.get_items() for sid, session in sessions.items()}
    finally:
        await engine.dispose()


def _order(item: dict[str, Any]) -> int:
    """Where an item of "bob" or "bob " was written (the interleaving above)."""
    content = item["content"]
    return int(content.split()[-1]) if content.startswith("message") else 0


async def test_agents_sdk_database_is_upgraded_in_place(fresh_url: str, backend: str) -> None:
    read_by_sdk = await write_with_the_sdk(fresh_url, backend)
    assert migrations.VERSION_TABLE not in await table_names(fresh_url)
    written = {**CONVERSATIONS, "bob": CONVERSATIONS["bob"][:-1]}  # one popped
    if backend == "mysql":
        # The SDK's MySQL collation files "bob " under "bob"; Lattice's exact
        # ids separate them again.
        assert read_by_sdk["bob"] == sorted(written["bob"] + written["bob "], key=_order)
    else:
        assert read_by_sdk == written

    lines: list[str] = []
    await migrations.upgrade(fresh_url, progress=lines.append)
    assert lines[0] == "found the OpenAI Agents SDK's tables; stamped revision 0001"
    assert await migrations.check(fresh_url)

    engine = make_engine(fresh_url)
    try:
        for sid, items in written.items():
            session = SQLAlchemySession(sid, engine=engine)
            assert await session.get_items() == items
            assert await session.get_items(limit=2) == items[-2:]
        async with engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(text("SELECT session_id, item_count FROM agent_sessions"))
                ).all()
            )
        assert {
            bytes(k).decode() if not isinstance(k, str) else k: v for k, v in counts.items()
        } == {sid: len(items) for sid, items in written.items()}
        # New writes go after the adopted rows.
        bob = SQLAlchemySession("bob", engine=engine)
        await bob.add_items([{"role": "user", "content": "after the upgrade"}])
        assert (await bob.get_items())[-2:] == [
            written["bob"][-1],
            {"role": "user", "content": "after the upgrade"},
        ]
        assert await bob.pop_item() == {"role": "user", "content": "after the upgrade"}
    finally:
        await engine.dispose()


async def test_tables_matching_no_revision_are_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'odd.db'}"
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE agent_sessions (session_id TEXT PRIMARY KEY)"))
        with pytest.raises(migrations.MigrationError, match="agent_sessions without its partner"):
            await migrations.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE agent_messages (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("ALTER TABLE agent_sessions ADD COLUMN item_count BIGINT"))
        with pytest.raises(migrations.MigrationError, match="match no Lattice revision"):
            await migrations.upgrade(engine)
        assert await migrations.current(engine) is None
    finally:
        await engine.dispose()


async def test_sqlite_connection_in_a_transaction_with_foreign_keys_is_refused(
    tmp_path: Path,
) -> None:
    """Rebuilding SQLite tables with foreign keys on would cascade-delete messages."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'fk.db'}")  # foreign keys on
    try:
        async with engine.begin() as conn:
            with pytest.raises(migrations.MigrationError, match="foreign keys are on"):
                await migrations.upgrade(conn)
        assert await migrations.current(engine) is None
        async with engine.connect() as conn:  # outside a transaction: switched off and back
            await migrations.upgrade(conn)
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert await migrations.check(engine)
    finally:
        await engine.dispose()


# -- inside the application's own Alembic environment ---------------------------------

APP_MODELS = """
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "app_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(200))
"""

APP_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "app1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "app_notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("body", sa.String(200), nullable=False),
    )


def downgrade():
    op.drop_table("app_notes")
"""


def documented_env_py() -> str:
    """The application ``env.py`` shown in docs/deployment.md."""
    doc = (REPO / "docs" / "deployment.md").read_text()
    match = re.search(r"```python\n(# env\.py of the application.*?)```", doc, re.S)
    assert match, "docs/deployment.md lost its env.py example"
    return match.group(1)


def application_alembic(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """An application's Alembic scripts (``myapp``, revision app1, the documented env.py)."""
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(APP_MODELS)
    scripts = tmp_path / "app_migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(documented_env_py())
    (scripts / "versions" / "app1_notes.py").write_text(APP_REVISION)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myapp", raising=False)
    monkeypatch.delitem(sys.modules, "myapp.models", raising=False)
    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def test_inside_the_applications_alembic_env(
    fresh_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = application_alembic(fresh_url, tmp_path, monkeypatch)
    command.upgrade(config, "head")
    command.upgrade(config, "head")  # and again: nothing to do for either history

    import asyncio

    from myapp.models import Base  # type: ignore[import-not-found]

    async def inspect_result() -> tuple[Any, ...]:
        engine = make_engine(fresh_url)
        try:
            async with engine.connect() as conn:
                app_version = (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar_one()
                diff = await conn.run_sync(
                    lambda c: compare_metadata(
                        MigrationContext.configure(
                            c, opts={"include_name": migrations.exclude_lattice_tables}
                        ),
                        Base.metadata,
                    )
                )
            return app_version, await migrations.check(engine), diff
        finally:
            await engine.dispose()

    app_version, lattice_version, diff = asyncio.run(inspect_result())
    assert app_version == "app1"
    assert lattice_version == asyncio.run(migrations.history())[0].revision
    assert diff == []  # the app's autogenerate would not touch Lattice's tables
