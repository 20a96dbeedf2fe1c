"""What an Agents SDK user writes after swapping imports; must pass ``mypy --strict``.

Not collected by pytest (no ``test_`` prefix): tests/test_sdk_dropin.py runs
mypy on it. Written as such a user would: no casts, no ``type: ignore``.
"""

from __future__ import annotations

import agents
from agents import Agent, RunConfig, Runner
from agents.memory import Session
from sqlalchemy.ext.asyncio import create_async_engine

from lattice import (
    OpenAIConversationsSession,
    SessionSettings,
    SQLAlchemySession,
    SQLiteSession,
)


async def main() -> str:
    agent = Agent(name="Assistant", instructions="Reply very concisely.")
    result = await Runner.run(agent, "hi", session=SQLiteSession("x"))

    s: agents.memory.Session = SQLiteSession("x")
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    on_engine: Session = SQLAlchemySession("y", engine=engine, create_tables=True)
    remote: Session = OpenAIConversationsSession()

    config = RunConfig(session_settings=SessionSettings(limit=10))
    await Runner.run(agent, "again", session=on_engine, run_config=config)

    items = await s.get_items()
    await s.add_items(items)
    await on_engine.add_items([{"role": "user", "content": "typed as the SDK's item"}])
    last = await remote.pop_item()
    return f"{result.final_output} {len(items)} {last is None}"
