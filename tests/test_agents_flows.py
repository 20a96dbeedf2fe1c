"""The seed's flows through the real Agents SDK ``Runner``, on every backend.

``agents.testing.ScriptedModel`` stands in for the model: it answers from a
script and records every call, so each test checks both what the model was
sent (the history the session gave the Runner) and what the session stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agents
import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import SessionABC, SessionSettings, SQLAlchemySession, SQLiteSession, dispose_engines
from lattice.integrations.transcript import transcript
from lattice.schema import LatticeTables

from .conftest import backend_url

SessionFactory = Callable[..., SQLAlchemySession]
QUIET = RunConfig(tracing_disabled=True)


@pytest.fixture
def make_session(engine: AsyncEngine, tables: LatticeTables) -> SessionFactory:
    """Sessions on the test's engine and fresh tables."""

    def make(session_id: str, **kwargs: Any) -> SQLAlchemySession:
        return SQLAlchemySession(
            session_id,
            engine=engine,
            sessions_table=tables.sessions.name,
            messages_table=tables.messages.name,
            **kwargs,
        )

    return make


def replies(*texts: str) -> ScriptedModel:
    return ScriptedModel([[assistant_message(text)] for text in texts])


def sent(model: ScriptedModel, call: int) -> list[tuple[str, str]]:
    """What the model was sent on its ``call``-th call, as (role, text)."""
    return transcript(model.calls[call].input)


# -- the quick start: run, run, then run_sync from synchronous code ------------------


def test_quick_start_from_url(backend: str, tables: LatticeTables, tmp_path: Path) -> None:
    session = SQLAlchemySession.from_url(
        "conversation_123",
        url=backend_url(backend, tmp_path),
        sessions_table=tables.sessions.name,
        messages_table=tables.messages.name,
        create_tables=True,
    )
    check_quick_start(session, private_engine=backend == "sqlite_memory")


@pytest.mark.parametrize("where", ["memory", "file"])
def test_quick_start_sqlite_session(where: str, tmp_path: Path) -> None:
    path = ":memory:" if where == "memory" else tmp_path / "conversations.db"
    check_quick_start(SQLiteSession("conversation_123", path), private_engine=where == "memory")


def check_quick_start(session: SQLAlchemySession, *, private_engine: bool) -> None:
    """Two turns with ``Runner.run``, a third with ``Runner.run_sync`` outside any loop."""
    model = replies("San Francisco", "California", "Approximately 39 million")
    agent = Agent(name="Assistant", instructions="Reply very concisely.", model=model)

    async def first_two_turns() -> list[str]:
        first = await Runner.run(
            agent, "What city is the Golden Gate Bridge in?", session=session, run_config=QUIET
        )
        second = await Runner.run(agent, "What state is it in?", session=session, run_config=QUIET)
        await dispose_engines()
        return [first.final_output, second.final_output]

    assert asyncio.run(first_two_turns()) == ["San Francisco", "California"]
    # Synchronous code, no loop running: run_sync drives its own loop, on which
    # from_url sessions get their own shared engine.
    third = Runner.run_sync(agent, "What's the population?", session=session, run_config=QUIET)
    assert third.final_output == "Approximately 39 million"

    async def stored_then_close() -> list[dict[str, Any]]:
        items = await session.get_items()
        await dispose_engines()
        if private_engine:
            await session.engine.dispose()
        return items

    loop = asyncio.get_event_loop_policy().get_event_loop()
    stored = loop.run_until_complete(stored_then_close())

    assert sent(model, 0) == [("user", "What city is the Golden Gate Bridge in?")]
    assert sent(model, 1) == [
        ("user", "What city is the Golden Gate Bridge in?"),
        ("assistant", "San Francisco"),
        ("user", "What state is it in?"),
    ]
    assert sent(model, 2) == [
        *sent(model, 1),
        ("assistant", "California"),
        ("user", "What's the population?"),
    ]
    assert transcript(stored) == [*sent(model, 2), ("assistant", "Approximately 39 million")]
    assert model.calls[2].system_instructions == "Reply very concisely."


# -- memory operations ------------------------------------------------------------


async def test_memory_operations_around_a_run(make_session: SessionFactory) -> None:
    session = make_session("user_123")
    assert await session.get_items() == []
    await session.add_items(
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"}]
    )
    model = replies("You said hello.")
    await Runner.run(
        Agent(name="A", model=model), "What did I say?", session=session, run_config=QUIET
    )
    assert sent(model, 0) == [
        ("user", "Hello"),
        ("assistant", "Hi there!"),
        ("user", "What did I say?"),
    ]
    assert len(await session.get_items()) == 4
    assert transcript(await session.get_items(limit=2)) == [
        ("user", "What did I say?"),
        ("assistant", "You said hello."),
    ]
    popped = await session.pop_item()
    assert popped is not None and transcript([popped]) == [("assistant", "You said hello.")]
    assert await session.pop_item() == {"role": "user", "content": "What did I say?"}
    assert await session.pop_item() == {"role": "assistant", "content": "Hi there!"}
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None


async def test_pop_item_correction(make_session: SessionFactory) -> None:
    session = make_session("correction_example")
    model = replies("4", "5")
    agent = Agent(name="Assistant", model=model)
    first = await Runner.run(agent, "What's 2 + 2?", session=session, run_config=QUIET)
    assert first.final_output == "4"

    assistant_item = await session.pop_item()
    user_item = await session.pop_item()
    assert assistant_item is not None and transcript([assistant_item]) == [("assistant", "4")]
    assert user_item == {"content": "What's 2 + 2?", "role": "user"}
    assert await session.get_items() == []

    second = await Runner.run(agent, "What's 2 + 3?", session=session, run_config=QUIET)
    assert second.final_output == "5"
    assert sent(model, 1) == [("user", "What's 2 + 3?")]  # the wrong question is gone
    assert transcript(await session.get_items()) == [("user", "What's 2 + 3?"), ("assistant", "5")]


async def test_sessions_in_one_database_are_kept_apart(make_session: SessionFactory) -> None:
    model = replies("Hi, one.", "Hi, two.", "Again, one.")
    agent = Agent(name="Assistant", model=model)
    one, two = make_session("user_123"), make_session("user_456")
    await Runner.run(agent, "Hello from one", session=one, run_config=QUIET)
    await Runner.run(agent, "Hello from two", session=two, run_config=QUIET)
    await Runner.run(agent, "One again", session=one, run_config=QUIET)

    assert sent(model, 1) == [("user", "Hello from two")]
    assert sent(model, 2) == [
        ("user", "Hello from one"),
        ("assistant", "Hi, one."),
        ("user", "One again"),
    ]
    assert transcript(await two.get_items()) == [
        ("user", "Hello from two"),
        ("assistant", "Hi, two."),
    ]
    await one.clear_session()
    assert len(await two.get_items()) == 2
    # A second object on the same id is the same conversation.
    assert transcript(await make_session("user_456").get_items()) == transcript(
        await two.get_items()
    )


@pytest.mark.parametrize(
    "override",
    [agents.SessionSettings(limit=2), {"limit": 2}],
    ids=["sdk_settings", "dict"],
)
async def test_session_settings_limit_through_run_config(
    make_session: SessionFactory, override: Any
) -> None:
    session = make_session("windowed", session_settings=SessionSettings(limit=3))
    await session.add_items([{"role": "user", "content": f"old {i}"} for i in range(5)])
    model = replies("a", "b")
    agent = Agent(name="Assistant", model=model)

    # The session's own setting: the latest 3 items.
    await Runner.run(agent, "first", session=session, run_config=QUIET)
    assert sent(model, 0) == [
        ("user", "old 2"),
        ("user", "old 3"),
        ("user", "old 4"),
        ("user", "first"),
    ]

    # RunConfig(session_settings=...) wins over the session's.
    config = RunConfig(tracing_disabled=True, session_settings=override)
    await Runner.run(agent, "second", session=session, run_config=config)
    assert sent(model, 1) == [("user", "first"), ("assistant", "a"), ("user", "second")]
    # The window limits what the model sees, never what is kept.
    assert len(await session.get_items(limit=100)) == 9
    assert session.session_settings == SessionSettings(limit=3)


async def test_session_input_callback(make_session: SessionFactory) -> None:
    session = make_session("callback")
    await session.add_items(
        [
            {"role": "user", "content": "keep me out"},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "recent"},
        ]
    )
    seen: list[int] = []

    def last_history_item_only(
        history: list[dict[str, Any]], new_input: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        seen.append(len(history))
        return history[-1:] + new_input

    model = replies("ok")
    config = RunConfig(tracing_disabled=True, session_input_callback=last_history_item_only)
    await Runner.run(Agent(name="A", model=model), "new", session=session, run_config=config)

    assert seen == [3]
    assert sent(model, 0) == [("user", "recent"), ("user", "new")]
    # History is not rewritten by the callback; only the new turn is appended.
    assert transcript(await session.get_items()) == [
        ("user", "keep me out"),
        ("assistant", "noted"),
        ("user", "recent"),
        ("user", "new"),
        ("assistant", "ok"),
    ]


class RedactingSession(SessionABC):
    """A custom session: masks digits before they are stored, on any Lattice session."""

    def __init__(self, inner: SQLAlchemySession) -> None:
        self.session_id = inner.session_id
        self.inner = inner
        self.writes = 0

    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        return await self.inner.get_items(limit)

    async def add_items(self, items: list[dict[str, Any]]) -> None:
        self.writes += 1
        masked = [
            {**item, "content": "".join("#" if c.isdigit() else c for c in item["content"])}
            if isinstance(item.get("content"), str)
            else item
            for item in items
        ]
        await self.inner.add_items(masked)

    async def pop_item(self) -> dict[str, Any] | None:
        return await self.inner.pop_item()

    async def clear_session(self) -> None:
        await self.inner.clear_session()


async def test_custom_session_abc_subclass(make_session: SessionFactory) -> None:
    session = RedactingSession(make_session("custom"))
    assert isinstance(session, agents.memory.Session)
    model = replies("Got it.", "It is ####.")
    agent = Agent(name="Assistant", model=model)
    await Runner.run(agent, "My PIN is 1234", session=session, run_config=QUIET)
    await Runner.run(agent, "What is my PIN?", session=session, run_config=QUIET)

    # The Runner stores each turn in two batches: the user's input before the
    # model is called, the model's output after.
    assert session.writes == 4
    assert sent(model, 1) == [
        ("user", "My PIN is ####"),
        ("assistant", "Got it."),
        ("user", "What is my PIN?"),
    ]
    assert "1234" not in repr(await session.inner.get_items())


@function_tool
def get_weather(city: str) -> str:
    """Return the weather in a city."""
    return f"Sunny in {city}, 21 °C"


async def test_function_tool_turn_is_stored_and_replayed(make_session: SessionFactory) -> None:
    session = make_session("tools")
    model = ScriptedModel(
        [
            [function_call("get_weather", {"city": "Lisbon"}, call_id="call_1")],
            [assistant_message("It is sunny in Lisbon.")],
            [assistant_message("You asked about Lisbon.")],
        ]
    )
    agent = Agent(name="Assistant", model=model, tools=[get_weather])
    result = await Runner.run(agent, "Weather in Lisbon?", session=session, run_config=QUIET)
    assert result.final_output == "It is sunny in Lisbon."

    stored = await session.get_items()
    assert [item.get("type", "message") for item in stored] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    call, output = stored[1], stored[2]
    assert (call["name"], call["call_id"], call["arguments"]) == (
        "get_weather",
        "call_1",
        '{"city":"Lisbon"}',
    )
    assert output == {
        "call_id": "call_1",
        "output": "Sunny in Lisbon, 21 °C",
        "type": "function_call_output",
    }
    # Within the turn the model saw the tool's output ...
    assert model.calls[1].input[-1] == output
    # ... and the next turn gets the whole exchange from the session.
    await Runner.run(agent, "Which city did I ask about?", session=session, run_config=QUIET)
    assert model.calls[2].input == [
        *stored,
        {"content": "Which city did I ask about?", "role": "user"},
    ]


# -- the protocol -------------------------------------------------------------------


async def test_lattice_sessions_are_agents_sessions(
    make_session: SessionFactory, backend: str, tmp_path: Path
) -> None:
    import openai

    from lattice import OpenAIConversationsSession

    assert isinstance(make_session("p"), agents.memory.Session)
    if backend.startswith("sqlite"):
        path = ":memory:" if backend == "sqlite_memory" else tmp_path / "p.db"
        sqlite = SQLiteSession("p", path)
        assert isinstance(sqlite, agents.memory.Session)
        if backend == "sqlite_memory":
            await sqlite.engine.dispose()
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="test")
    conversation = OpenAIConversationsSession("conv_123", client)
    assert isinstance(conversation, agents.memory.Session)
    await client.close()
