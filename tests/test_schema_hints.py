"""Issue 16 finding 8: missing or outdated tables get an error that says what to do.

Before, the library raised the database's bare words (``no such table:
agent_sessions``, ``relation ... does not exist``) and only the CLI added
"run `lattice db upgrade`".
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore, SQLAlchemySession
from lattice.errors import LatticeError, SchemaNotReadyError
from lattice.schema import LatticeTables


def _missing_names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"sessions_table": f"nope{tag}_s", "messages_table": f"nope{tag}_m"}


async def test_missing_tables_say_run_lattice_db_upgrade(engine: AsyncEngine) -> None:
    names = _missing_names()
    session = SQLAlchemySession("s", engine=engine, **names)
    store = SessionStore(engine, **names)
    calls = [
        session.get_items(),
        session.add_items([{"n": 1}]),
        session.pop_item(),
        session.clear_session(),
        store.count(),
        store.list_sessions(),
        store.set_metadata("s", {"k": 1}),
    ]
    for call in calls:
        with pytest.raises(SchemaNotReadyError, match="lattice db upgrade") as info:
            await call
        assert isinstance(info.value, LatticeError)
        assert "create_tables=True" in str(info.value)
        assert names["sessions_table"] in str(info.value) or names["messages_table"] in str(
            info.value
        )


async def test_a_column_of_a_newer_schema_missing_says_upgrade(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    store = SessionStore(
        engine, sessions_table=tables.sessions.name, messages_table=tables.messages.name
    )
    await store.session("s").add_items([{"n": 1}])
    async with engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {tables.sessions.name} DROP COLUMN session_metadata"))
    with pytest.raises(
        SchemaNotReadyError, match="older than this Lattice: run `lattice db upgrade`"
    ):
        await store.list_sessions()
