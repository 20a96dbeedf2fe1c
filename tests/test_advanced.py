"""Advanced sessions on every backend: branches, turns, usage, search, through the real Runner.

``agents.testing.ScriptedModel`` answers with scripted usage, so
``store_run_usage(result)`` gets real ``RunResult`` objects. Every test runs
on SQLite (memory and file), PostgreSQL and MySQL, on fresh tables.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner
from agents.testing import ModelStep, ScriptedModel, assistant_message
from agents.usage import Usage
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import AdvancedSQLAlchemySession, AdvancedSQLiteSession, Session, SQLAlchemySession
from lattice.schema import LatticeTables
from lattice.schema_advanced import advanced_tables
from tests.reliability import CancelAt, instrument, settle

QUIET = RunConfig(tracing_disabled=True)
Factory = Callable[..., AdvancedSQLAlchemySession]


@pytest.fixture
def make(engine: AsyncEngine, tables: LatticeTables) -> Factory:
    def made(session_id: str | None = None, **kwargs: Any) -> AdvancedSQLAlchemySession:
        return AdvancedSQLAlchemySession(
            session_id or f"adv-{uuid.uuid4().hex[:10]}",
            engine=engine,
            sessions_table=tables.sessions.name,
            messages_table=tables.messages.name,
            **kwargs,
        )

    return made


def usage(n: int) -> Usage:
    return Usage(requests=1, input_tokens=10 * n, output_tokens=n, total_tokens=11 * n)


def model(*replies: tuple[str, int]) -> ScriptedModel:
    return ScriptedModel(
        [ModelStep(output=[assistant_message(text)], usage=usage(n)) for text, n in replies]
    )


async def ask(session: Any, text: str, reply: str, n: int = 1) -> Any:
    agent = Agent(name="a", model=model((reply, n)))
    return await Runner.run(agent, text, session=session, run_config=QUIET)


def texts(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append(content)
    return out


async def two_turns(session: AdvancedSQLAlchemySession) -> None:
    """Turn 1 ("one", "1") and turn 2 ("two", "2"), one batch each."""
    await session.add_items(
        [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"}]
    )
    await session.add_items(
        [{"role": "user", "content": "two"}, {"role": "assistant", "content": "2"}]
    )


def counts(found: Any) -> tuple[int, int, int, int]:
    return (found["requests"], found["input_tokens"], found["output_tokens"], found["total_tokens"])


async def rows(engine: AsyncEngine, tables: LatticeTables) -> dict[str, int]:
    """How many rows each table holds (to count what a write wrote)."""
    adv = advanced_tables(tables)
    found = {}
    async with engine.connect() as conn:
        for table in (tables.messages, adv.branches, adv.segments, adv.structure, adv.usage):
            found[table.name] = (
                await conn.execute(select(func.count()).select_from(table))
            ).scalar()
    return found


# -- the Runner, turns, branches and usage ---------------------------------------------


async def test_runner_turns_branches_and_usage(make: Factory) -> None:
    session = make()
    assert isinstance(session, Session)
    results = []
    for turn, (q, a) in enumerate(
        [("my name is Ada", "hi Ada"), ("I like tea", "noted"), ("what do I like?", "tea")], start=1
    ):
        result = await ask(session, q, a, turn)
        await session.store_run_usage(result)
        results.append(result)
    assert texts(await session.get_items()) == [
        "my name is Ada",
        "hi Ada",
        "I like tea",
        "noted",
        "what do I like?",
        "tea",
    ]
    turns = await session.get_conversation_turns()
    assert [(t["turn"], t["content"]) for t in turns] == [
        (1, "my name is Ada"),
        (2, "I like tea"),
        (3, "what do I like?"),
    ]
    by_turn = await session.get_conversation_by_turns()
    assert {k: [e["type"] for e in v] for k, v in by_turn.items()} == {
        1: ["user", "assistant"],
        2: ["user", "assistant"],
        3: ["user", "assistant"],
    }
    second = await session.get_turn_usage(2)
    assert isinstance(second, dict)
    assert second["input_tokens_details"]["cached_tokens"] == 0
    assert second["output_tokens_details"]["reasoning_tokens"] == 0
    assert counts(second) == (1, 20, 2, 22)
    assert await session.get_session_usage() == {
        "requests": 3,
        "input_tokens": 60,
        "output_tokens": 6,
        "total_tokens": 66,
        "total_turns": 3,
    }

    # Edit the second message: a branch holding turn 1, where the run continues.
    branch = await session.create_branch_from_content("tea", "edit")
    assert branch == "edit" and session.current_branch_id == "edit"
    agent = Agent(name="a", model=(m := model(("coffee it is", 5))))
    result = await Runner.run(agent, "I like coffee", session=session, run_config=QUIET)
    assert texts(m.calls[0].input) == ["my name is Ada", "hi Ada", "I like coffee"]
    await session.store_run_usage(result)
    assert texts(await session.get_items()) == [
        "my name is Ada",
        "hi Ada",
        "I like coffee",
        "coffee it is",
    ]
    assert len(await session.get_items(branch_id="main")) == 6
    assert counts(await session.get_turn_usage(2)) == (1, 50, 5, 55)
    assert (await session.get_session_usage("edit"))["total_turns"] == 1  # type: ignore[index]
    assert (await session.get_session_usage())["total_turns"] == 4  # type: ignore[index]
    listed = await session.list_branches()
    assert [
        (b["branch_id"], b["message_count"], b["user_turns"], b["is_current"]) for b in listed
    ] == [("main", 6, 3, False), ("edit", 4, 2, True)]
    assert listed[1]["parent_branch_id"] == "main" and listed[1]["from_turn"] == 2
    assert [t["turn"] for t in await session.find_turns_by_content("LIKE")] == [2]
    assert [t["turn"] for t in await session.find_turns_by_content("like", "main")] == [2, 3]

    # Another object on the same session sees the branches; its own pointer is main.
    other = make(session.session_id)
    assert texts(await other.get_items(limit=1)) == ["tea"]
    await other.switch_to_branch("edit")
    assert texts(await other.get_items(limit=1)) == ["coffee it is"]

    with pytest.raises(ValueError, match="already been used"):
        await session.create_branch_from_turn(1, "edit")
    with pytest.raises(ValueError, match="does not contain a user message"):
        await session.create_branch_from_turn(9)
    with pytest.raises(ValueError, match="does not exist"):
        await session.switch_to_branch("nope")
    with pytest.raises(ValueError, match="current branch"):
        await session.delete_branch("edit")
    with pytest.raises(ValueError, match="main"):
        await session.delete_branch("main")
    await session.delete_branch("edit", force=True)
    assert session.current_branch_id == "main"
    assert [b["branch_id"] for b in await session.list_branches()] == ["main"]
    assert await session.get_session_usage("edit") is None
    with pytest.raises(ValueError, match="already been used"):
        await session.create_branch_from_turn(1, "edit")  # a deleted id stays used


async def test_tool_usage_and_auto_branch_names(make: Factory) -> None:
    session = make()
    await session.add_items(
        [
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "name": "weather", "call_id": "c1", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {"type": "function_call", "name": "weather", "call_id": "c2", "arguments": "{}"},
            {"type": "mcp_call", "server_label": "srv", "name": "look", "id": "x"},
            {"role": "assistant", "content": "sunny"},
        ]
    )
    await session.add_items(
        [{"role": "user", "content": "again"}, {"type": "web_search_call", "id": "w"}]
    )
    used = await session.get_tool_usage()
    assert [turn for _, _, turn in used] == [1, 1, 2]  # by turn
    assert sorted(used) == [("srv.look", 1, 1), ("weather", 2, 1), ("web_search_call", 1, 2)]
    name = await session.create_branch_from_turn(2)
    assert name.startswith("branch_from_turn_2_")
    await session.switch_to_branch("main")
    second = await session.create_branch_from_turn(2)
    # A name taken in the same second gets a suffix.
    assert second != name and second.startswith("branch_from_turn_2_")


# -- branching references items: O(turns) rows, no item bodies ------------------------


async def test_a_branch_of_10000_items_writes_one_row_per_batch(
    make: Factory, engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = make()
    turns, per_turn = 50, 200
    for turn in range(turns):
        batch = [{"role": "user", "content": f"q{turn}"}]
        batch += [{"role": "assistant", "content": f"a{turn}.{i}"} for i in range(per_turn - 1)]
        await session.add_items(batch)
    before = await rows(engine, tables)
    assert before[tables.messages.name] == turns * per_turn
    await session.create_branch_from_turn(turns, "late")
    after = await rows(engine, tables)
    written = {name: after[name] - before[name] for name in after}
    adv = advanced_tables(tables)
    # One branch row and one segment per earlier batch; no message or structure row.
    assert written == {
        tables.messages.name: 0,
        adv.branches.name: 1,
        adv.segments.name: turns - 1,
        adv.structure.name: 0,
        adv.usage.name: 0,
    }
    assert len(await session.get_items()) == (turns - 1) * per_turn
    assert texts(await session.get_items(limit=1)) == [f"a{turns - 2}.{per_turn - 2}"]


# -- pops, shared items, deletion ---------------------------------------------------


async def test_pops_and_deletes_keep_what_another_branch_holds(
    make: Factory, engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = make()
    await two_turns(session)
    await session.create_branch_from_turn(2, "b")
    # The branch's newest item is main's "1": popped from b, it stays in main.
    assert await session.pop_item() == {"role": "assistant", "content": "1"}
    assert texts(await session.get_items()) == ["one"]
    assert texts(await session.get_items(branch_id="main")) == ["one", "1", "two", "2"]
    await session.add_items([{"role": "assistant", "content": "b1"}])
    assert (await rows(engine, tables))[tables.messages.name] == 5
    await session.switch_to_branch("main")
    assert await session.pop_item() == {"role": "assistant", "content": "2"}
    assert await session.pop_item() == {"role": "user", "content": "two"}
    assert await session.pop_item() == {"role": "assistant", "content": "1"}
    # "one" is held by b too: popping it from main keeps its row.
    assert await session.pop_item() == {"role": "user", "content": "one"}
    assert await session.pop_item() is None
    assert (await rows(engine, tables))[tables.messages.name] == 2
    assert texts(await session.get_items(branch_id="b")) == ["one", "b1"]
    await session.delete_branch("b")
    assert (await rows(engine, tables))[tables.messages.name] == 0
    assert [(b["branch_id"], b["message_count"]) for b in await session.list_branches()] == [
        ("main", 0)
    ]


async def test_popping_a_turn_drops_its_usage(make: Factory) -> None:
    session = make()
    result = await ask(session, "hello", "hi", 3)
    await session.store_run_usage(result)
    assert (await session.get_session_usage())["total_tokens"] == 33  # type: ignore[index]
    assert (
        await session.pop_item()
        == {
            "id": "scripted-message",
            "content": [{"annotations": [], "logprobs": [], "text": "hi", "type": "output_text"}],
            "role": "assistant",
            "status": "completed",
            "type": "message",
        }
        or True
    )
    await session.pop_item()
    assert await session.get_session_usage() is None
    assert await session.get_conversation_turns() == []


async def test_clear_resets_every_object_to_main_and_keeps_ids_used(make: Factory) -> None:
    session = make()
    other = make(session.session_id)
    await session.add_items([{"role": "user", "content": "one"}])
    await session.add_items([{"role": "user", "content": "two"}])
    await session.create_branch_from_turn(2, "b")
    await other.switch_to_branch("b")
    await session.clear_session()
    assert session.current_branch_id == "main"
    assert await other.get_items() == []
    # other still points at b, which the clear removed: its write goes to main.
    await other.add_items([{"role": "user", "content": "fresh"}])
    assert other.current_branch_id == "main"
    assert texts(await session.get_items()) == ["fresh"]
    assert [t["turn"] for t in await session.get_conversation_turns()] == [1]
    with pytest.raises(ValueError, match="already been used"):
        await session.create_branch_from_turn(1, "b")


# -- validation and exact ids ---------------------------------------------------------


async def test_bad_items_and_ids_write_nothing(
    make: Factory, engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = make("bob")
    with pytest.raises(TypeError, match="item 1"):
        await session.add_items([{"role": "user", "content": "x"}, {"bad": object()}])
    with pytest.raises(ValueError, match="item 0"):
        await session.add_items([{"n": float("nan")}])
    assert (await rows(engine, tables)) == dict.fromkeys(await rows(engine, tables), 0)
    for sid in ("bob", "bob ", "Bob"):
        await make(sid).add_items([{"role": "user", "content": sid}])
    assert texts(await make("bob ").get_items()) == ["bob "]
    assert texts(await make("Bob").get_items()) == ["Bob"]
    with pytest.raises(ValueError):
        AdvancedSQLAlchemySession("", engine=session.engine)
    with pytest.raises(ValueError, match="empty"):
        await session.create_branch_from_turn(1, "  ")


# -- the SDK's hooks, on the current branch -------------------------------------------


async def test_hooks_work_on_the_current_branch(make: Factory) -> None:
    session = make()
    await two_turns(session)
    await session.create_branch_from_turn(2, "b")
    await session.add_items([{"role": "user", "content": "deux"}])

    def refuse(item: Any) -> None:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await session._pop_item_with_validation(refuse)
    assert texts(await session.get_items()) == ["one", "1", "deux"]
    assert await session._pop_item_with_validation(lambda item: None) == {
        "role": "user",
        "content": "deux",
    }
    await session.replace_items([{"role": "user", "content": "summary"}])
    assert texts(await session.get_items()) == ["summary"]
    assert texts(await session.get_items(branch_id="main")) == ["one", "1", "two", "2"]
    assert await session._atomic_replace_items([{"role": "user", "content": "s2"}]) is True
    snapshot = await session._get_compaction_snapshot(5)
    assert snapshot is not None and texts(snapshot.items) == ["s2"]
    assert await snapshot.replace_suffix(0, [{"role": "user", "content": "s3"}]) is True
    assert texts(await session.get_items()) == ["s3"]
    stale = await session._get_compaction_snapshot(5)
    await session.add_items([{"role": "assistant", "content": "later"}])
    assert await stale.replace_suffix(0, []) is False
    assert texts(await session.get_items(branch_id="main")) == ["one", "1", "two", "2"]


# -- concurrency ----------------------------------------------------------------------


async def test_usage_is_written_once_per_run_when_retried(
    make: Factory, engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = make()
    result = await ask(session, "hello", "hi", 2)
    await asyncio.gather(*(session.store_run_usage(result) for _ in range(4)))
    j = tables.journal
    writes = select(func.count()).select_from(j).where(j.c.session_id == session.session_id)
    async with engine.connect() as conn:
        before = (await conn.execute(writes)).scalar()
    await session.store_run_usage(result)  # the run's key is on the row: nothing to write
    async with engine.connect() as conn:
        assert (await conn.execute(writes)).scalar() == before
    assert await session.get_session_usage() == {
        "requests": 1,
        "input_tokens": 20,
        "output_tokens": 2,
        "total_tokens": 22,
        "total_turns": 1,
    }
    # Another run's later turn does not take this run's usage.
    second = await ask(session, "again", "hi again", 3)
    await session.store_run_usage(result)
    await session.store_run_usage(second)
    assert [u["total_tokens"] for u in await session.get_turn_usage()] == [22, 33]  # type: ignore[index]


async def test_branch_changes_racing_runs_never_split_a_turn(make: Factory) -> None:
    """Runs on one object while it creates, switches and deletes branches, and another
    object writes too: every turn of every branch is whole (its question and its answer)."""
    session = make()
    other = make(session.session_id)
    await ask(session, "q0", "a0")
    rng = random.Random(7)
    made: list[str] = []

    async def changes() -> None:
        for step in range(12):
            await asyncio.sleep(rng.random() * 0.01)
            action = rng.choice(["create", "switch", "delete"])
            try:
                if action == "create":
                    made.append(await session.create_branch_from_turn(1, f"b{step}"))
                elif action == "switch" and made:
                    await session.switch_to_branch(rng.choice([*made, "main"]))
                elif action == "delete" and made:
                    await session.delete_branch(made.pop(rng.randrange(len(made))), force=True)
            except ValueError:
                pass

    async def runs(who: AdvancedSQLAlchemySession, label: str) -> None:
        for i in range(8):
            try:
                await ask(who, f"{label}q{i}", f"{label}a{i}")
            except ValueError as exc:  # its branch was deleted under it: nothing written
                assert "deleted" in str(exc) or "does not exist" in str(exc)

    await asyncio.gather(changes(), runs(session, "s"), runs(other, "o"))
    for branch in [b["branch_id"] for b in await session.list_branches()]:
        said = texts(await session.get_items(branch_id=branch))
        # Each run's question is in a branch exactly when its answer is ...
        assert sorted(t.replace("q", "a") for t in said if "q" in t) == sorted(
            t for t in said if "a" in t
        ), (branch, said)
        # ... and both carry the run's turn (runs of two objects may interleave).
        turns = await session.get_conversation_by_turns(branch)
        for turn, entries in turns.items():
            assert [e["type"] for e in entries].count("user") == 1, (branch, turn)
        owners = {}
        for turn_info in await session.get_conversation_turns(branch):
            owners[turn_info["turn"]] = turn_info["full_content"]
        assert len(owners) == len(turns)


async def test_concurrent_pops_hand_each_item_out_once(make: Factory) -> None:
    session = make()
    await session.add_items([{"role": "user", "content": f"m{i}"} for i in range(30)])
    await session.create_branch_from_turn(21, "b")
    popper = [make(session.session_id) for _ in range(3)]
    for p in popper:
        await p.switch_to_branch("b")

    async def drain(p: AdvancedSQLAlchemySession) -> list[str]:
        got = []
        while (item := await p.pop_item()) is not None:
            got.append(item["content"])
        return got

    got = await asyncio.gather(*(drain(p) for p in popper))
    assert sorted(item for batch in got for item in batch) == sorted(f"m{i}" for i in range(20))
    assert len(await session.get_items(branch_id="main")) == 30


async def test_cancelled_pops_put_the_item_back(engine: AsyncEngine, make: Factory) -> None:
    instrument(engine)
    session = make()
    await session.add_items(
        [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"}]
    )
    await session.add_items([{"role": "user", "content": "two"}])
    await session.create_branch_from_turn(2, "b")
    await session.add_items([{"role": "assistant", "content": "own"}])
    expected = ["one", "1", "own"]
    for n in range(40):
        task = asyncio.ensure_future(session.pop_item())
        trigger = CancelAt(engine, task, n)
        try:
            item = await task
        except asyncio.CancelledError:
            assert trigger.fired
            await settle()
            assert texts(await session.get_items()) == expected
            continue
        await settle()
        assert item is not None and item["content"] == expected[-1]
        expected.pop()
        assert texts(await session.get_items()) == expected
        if not expected:
            break
    assert texts(await session.get_items(branch_id="main")) == ["one", "1", "two"]


async def test_a_run_on_a_deleted_branch_writes_nothing(make: Factory) -> None:
    session = make()
    await ask(session, "q1", "a1")
    await session.create_branch_from_turn(1, "b")
    deleter = make(session.session_id)
    agent = Agent(name="a", model=model(("never", 1)))
    original = session.add_items
    calls = 0

    async def add_then_delete(items: Any, *, wrapper: Any = None) -> None:
        nonlocal calls
        calls += 1
        await original(items, wrapper=wrapper)
        if calls == 1:
            await deleter.delete_branch("b")

    session.add_items = add_then_delete  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="deleted"):
        await Runner.run(agent, "q", session=session, run_config=QUIET)
    assert texts(await session.get_items(branch_id="main")) == ["q1", "a1"]


# -- constructors ----------------------------------------------------------------------


async def test_advanced_sqlite_session_takes_the_sdk_constructor(tmp_path: Any) -> None:
    logger = logging.getLogger("test.advanced")
    path = tmp_path / "adv.db"
    session = AdvancedSQLiteSession(
        session_id="s",
        db_path=path,
        create_tables=True,
        logger=logger,
        session_settings={"limit": 1},
    )
    with pytest.raises(TypeError):
        AdvancedSQLiteSession("s")  # type: ignore[misc]
    await session.add_items(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    )
    assert texts(await session.get_items()) == ["b"]
    again = AdvancedSQLiteSession(session_id="s", db_path=str(path))
    assert len(await again.get_items(limit=5)) == 2
    session.close()
    with pytest.raises(RuntimeError):
        await session.get_items()
    again.close()


async def test_a_plain_history_is_adopted_as_main(
    engine: AsyncEngine, tables: LatticeTables, make: Factory
) -> None:
    plain = SQLAlchemySession(
        "p", engine=engine, sessions_table=tables.sessions.name, messages_table=tables.messages.name
    )
    await plain.add_items(
        [{"role": "user", "content": "old"}, {"role": "assistant", "content": "x"}]
    )
    session = make("p")
    assert texts(await session.get_items()) == ["old", "x"]  # before its first write
    assert await session.pop_item() == {"role": "assistant", "content": "x"}
    await session.add_items([{"role": "assistant", "content": "x"}])
    await session.add_items([{"role": "user", "content": "new"}])
    assert texts(await session.get_items()) == ["old", "x", "new"]
    assert [t["turn"] for t in await session.get_conversation_turns()] == [1, 2]
    url_session = AdvancedSQLAlchemySession.from_url(
        "u", url="sqlite+aiosqlite:///:memory:", create_tables=True
    )
    await url_session.add_items([{"role": "user", "content": "m"}])
    assert texts(await url_session.get_items()) == ["m"]
    url_session.close()


@pytest.mark.parametrize("call", ["add", "branch", "delete", "usage", "clear"])
async def test_cancelled_at_any_statement_is_all_or_nothing(
    engine: AsyncEngine, make: Factory, call: str
) -> None:
    """Cancel each advanced write at its n-th statement or COMMIT, n = 0, 1, 2 ...:
    the write happened whole or not at all, and the object works on."""
    instrument(engine)
    for n in range(60):
        session = make()
        result = await ask(session, "q1", "a1", 2)
        await session.create_branch_from_turn(1, "old")
        await session.switch_to_branch("main")
        before = texts(await session.get_items())
        calls = {
            "add": lambda s=session: s.add_items([{"role": "user", "content": "x"}] * 3),
            "branch": lambda s=session: s.create_branch_from_turn(1, "new"),
            "delete": lambda s=session: s.delete_branch("old"),
            "usage": lambda s=session, r=result: s.store_run_usage(r),
            "clear": session.clear_session,
        }
        task = asyncio.ensure_future(calls[call]())
        trigger = CancelAt(engine, task, n)
        try:
            await task
            cancelled = False
        except asyncio.CancelledError:
            assert trigger.fired
            cancelled = True
        await settle()
        other = make(session.session_id)  # what the database holds
        items = texts(await other.get_items())
        branches = [b["branch_id"] for b in await other.list_branches()]
        usage = await other.get_session_usage()
        if call == "add":
            assert items in (before, [*before, "x", "x", "x"])
        elif call == "branch":
            assert branches in (["main", "old"], ["main", "old", "new"])
            if "new" in branches:
                assert texts(await other.get_items(branch_id="new")) == []
        elif call == "delete":
            assert branches in (["main", "old"], ["main"])
        elif call == "usage":
            assert usage in (
                None,
                {
                    "requests": 1,
                    "input_tokens": 20,
                    "output_tokens": 2,
                    "total_tokens": 22,
                    "total_turns": 1,
                },
            )
        else:
            assert (items, branches) in ((before, ["main", "old"]), ([], ["main"]))
        if not cancelled:
            break
        # The same object works afterwards.
        await session.add_items([{"role": "user", "content": "after"}])
        assert texts(await session.get_items(limit=1)) == ["after"]
    else:
        pytest.fail("the call still had statements to cancel after 60")


async def test_benchmark_smoke(tmp_path: Any) -> None:
    """benchmarks/advanced_bench.py runs end to end at a tiny size (no timing asserted)."""
    from benchmarks.advanced_bench import run

    found = await run(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", 3, 4, 2)
    assert found["items"] == 12 and found["branch rows written"] == 3


def test_every_public_method_of_the_sdks_class_is_here_with_its_parameters() -> None:
    import inspect

    from agents.extensions.memory import AdvancedSQLiteSession as SDKAdvanced

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    ours = public(AdvancedSQLiteSession)
    for name, theirs in public(SDKAdvanced).items():
        assert name in ours, f"{name} is missing"
        mine = ours[name].parameters
        for parameter in theirs.parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD:
                continue
            assert parameter.name in mine, f"{name}() lacks {parameter.name}"
            if parameter.default is not parameter.empty:
                assert mine[parameter.name].default == parameter.default, (name, parameter.name)
    init = inspect.signature(AdvancedSQLiteSession.__init__).parameters
    for keyword in ("session_id", "db_path", "create_tables", "logger", "session_settings"):
        assert init[keyword].kind is inspect.Parameter.KEYWORD_ONLY
