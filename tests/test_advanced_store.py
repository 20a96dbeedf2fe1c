"""Advanced sessions through ``SessionStore`` and ``lattice sessions show``: branches are
listed and shown, and export/import (format version 2) and copies carry branches and usage."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from agents import Agent, Runner
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionStore
from lattice.schema import LatticeTables

from .test_advanced import QUIET, model, texts
from .test_cli_sessions import lattice
from .test_partitions import partitioned_url
from .test_store import extra_tables, store_on

__all__ = ["partitioned_url"]  # the fixture, used by name


async def conversation(store: SessionStore, session_id: str) -> Any:
    """Three turns on main with usage, then a branch from turn 2 with one turn of its own."""
    session = store.advanced_session(session_id)
    for turn, (q, a) in enumerate([("q1", "a1"), ("q2", "a2"), ("q3", "a3")], start=1):
        agent = Agent(name="a", model=model((a, turn)))
        await session.store_run_usage(await Runner.run(agent, q, session=session, run_config=QUIET))
    await session.create_branch_from_turn(2, "edit")
    agent = Agent(name="a", model=model(("b2", 7)))
    await session.store_run_usage(await Runner.run(agent, "e2", session=session, run_config=QUIET))
    await session.pop_item()  # popped from the branch only
    await session.add_items([{"role": "assistant", "content": "b2'"}])
    return session


async def picture(store: SessionStore, session_id: str) -> dict[str, Any]:
    """Everything an advanced session shows, per branch."""
    session = store.advanced_session(session_id)
    branches = await store.list_branches(session_id)
    shown: dict[str, Any] = {
        "branches": [
            (b["branch_id"], b["message_count"], b["user_turns"], b["parent_branch_id"])
            for b in branches
        ]
    }
    for b in branches:
        name = b["branch_id"]
        shown[name] = (
            texts(await session.get_items(branch_id=name)),
            await session.get_conversation_by_turns(name),
            await session.get_turn_usage(branch_id=name),
        )
    shown["usage"] = await session.get_session_usage()
    return shown


async def test_store_lists_branches_and_export_import_carry_them(
    engine: AsyncEngine, tables: LatticeTables, tmp_path: Path
) -> None:
    store = store_on(engine, tables)
    await conversation(store, "s")
    await store.session("plain").add_items([{"n": 1}])
    before = await picture(store, "s")
    assert before["branches"] == [("main", 6, 3, None), ("edit", 4, 2, "main")]
    assert before["edit"][0] == ["q1", "a1", "e2", "b2'"]
    assert [u["total_tokens"] for u in before["edit"][2]] == [77]
    assert (await store.list_branches("plain")) == []

    dump = tmp_path / "dump.jsonl"
    exported = await store.export_jsonl(dump)
    assert (exported.sessions, exported.items) == (2, 9)
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert lines[0]["version"] == 2
    assert [line.get("type") for line in lines].count("branches") == 1

    async with extra_tables(engine) as other_tables:
        other = store_on(engine, other_tables)
        imported = await other.import_jsonl(dump, on_conflict="append")
        assert (imported.created, imported.items) == (2, 9)
        assert await picture(other, "s") == before
        # The imported session works on: a new branch from the imported one.
        session = other.advanced_session("s")
        await session.switch_to_branch("edit")
        await session.create_branch_from_turn(2, "again")
        assert texts(await session.get_items()) == ["q1", "a1"]
        # Replace keeps it whole too; append into an existing session adds items only.
        again = await other.import_jsonl(dump, on_conflict="replace")
        assert again.replaced == 2
        assert await picture(other, "s") == before

    async with extra_tables(engine) as copy_tables:
        copied = store_on(engine, copy_tables)
        await store.export_jsonl(buffer := io.StringIO())
        buffer.seek(0)
        await copied.import_jsonl(buffer, on_conflict="skip")
        assert await picture(copied, "s") == before


async def test_a_version_1_file_still_imports(engine: AsyncEngine, tables: LatticeTables) -> None:
    store = store_on(engine, tables)
    old = (
        '{"format": "lattice-sessions", "version": 1, "exported_at": "2026-01-01T00:00:00+00:00"}\n'
        '{"type": "session", "session_id": "v1", "created_at": "2026-01-01T00:00:00+00:00", '
        '"updated_at": "2026-01-01T00:00:00+00:00", "item_count": 2, "metadata": null}\n'
        '{"type": "item", "created_at": "2026-01-01T00:00:00+00:00", '
        '"json": "{\\"role\\": \\"user\\", \\"content\\": \\"hi\\"}"}\n'
        '{"type": "item", "created_at": "2026-01-01T00:00:00+00:00", '
        '"json": "{\\"role\\": \\"assistant\\", \\"content\\": \\"yo\\"}"}\n'
        '{"type": "end", "sessions": 1, "items": 2}\n'
    )
    result = await store.import_jsonl(io.StringIO(old), on_conflict="append")
    assert (result.created, result.items) == (1, 2)
    session = store.advanced_session("v1")
    assert texts(await session.get_items()) == ["hi", "yo"]
    await session.add_items([{"role": "user", "content": "more"}])
    assert [t["turn"] for t in await session.get_conversation_turns()] == [1, 2]


async def test_cli_show_lists_and_shows_branches(fresh_url: str) -> None:
    async with SessionStore.from_url(fresh_url, create_tables=True) as store:
        await conversation(store, "s")
        await store.session("plain").add_items([{"n": 1}])
    shown = json.loads((await lattice("show", "s", "--url", fresh_url, "--json")).stdout)
    assert [(b["branch_id"], b["message_count"]) for b in shown["branches"]] == [
        ("main", 6),
        ("edit", 4),
    ]
    assert texts(shown["items"]) == ["q1", "a1", "q2", "a2", "q3", "a3"]
    edit = json.loads(
        (await lattice("show", "s", "--url", fresh_url, "--branch", "edit", "--json")).stdout
    )
    assert edit["branch"] == "edit" and texts(edit["items"]) == ["q1", "a1", "e2", "b2'"]
    table = await lattice("show", "s", "--url", fresh_url, "--branch", "edit", "--items", "1")
    assert table.exit_code == 0
    assert "main (6 items), edit (4 items)" in table.stdout
    assert "b2'" in table.stdout and "latest 1 of branch edit" in table.stdout
    missing = await lattice("show", "s", "--url", fresh_url, "--branch", "nope")
    assert missing.exit_code == 1 and "no branch 'nope'" in missing.stderr
    plain = json.loads((await lattice("show", "plain", "--url", fresh_url, "--json")).stdout)
    assert plain["branches"] == [] and plain["items"] == [{"n": 1}]


async def test_advanced_sessions_on_hash_partitioned_messages(partitioned_url: str) -> None:
    """PostgreSQL with ``agent_messages`` hash-partitioned (``--partitions 4``): branches,
    pops, deletion, export and import work as on the plain table."""
    async with SessionStore.from_url(partitioned_url) as store:
        await conversation(store, "part")
        before = await picture(store, "part")
        assert before["branches"] == [("main", 6, 3, None), ("edit", 4, 2, "main")]
        await store.export_jsonl(buffer := io.StringIO())
        session = store.advanced_session("part")
        await session.delete_branch("edit", force=True)
        assert [b["branch_id"] for b in await store.list_branches("part")] == ["main"]
        buffer.seek(0)
        await store.import_jsonl(buffer, on_conflict="replace")
        assert await picture(store, "part") == before
        await session.clear_session()
        assert await session.get_items() == []
