"""``lattice demo``: two processes, one conversation; and the offline model."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner
from typer.testing import CliRunner

from lattice import SQLiteSession, dispose_engines
from lattice.cli import app
from lattice.cli.demo import FIRST_RUN_SCRIPT, NEXT_RUN_SCRIPT
from lattice.integrations.offline_model import OfflineMemoryModel, compose_reply
from lattice.integrations.transcript import transcript

from .local_http import JSONHandler, serve

LATTICE = Path(sys.executable).with_name("lattice")


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LATTICE_DATABASE"))}
    env["COLUMNS"] = "200"  # no wrapped lines to match across
    return env


def run_demo(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [str(LATTICE), "demo", *args],
        cwd=cwd,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def stored_turns(path: Path) -> list[tuple[str, str]]:
    items = await SQLiteSession("demo", path).get_items()
    await dispose_engines()
    return transcript(items)


def test_second_process_continues_the_first(tmp_path: Path) -> None:
    first = run_demo(tmp_path)
    assert "Model: offline memory model (no OPENAI_API_KEY)" in first
    assert "Starting a new conversation." in first
    assert "Hello, Ada! This is the first turn" in first
    assert "2 turns came before this one. You told me: “Hi! My name is Ada.”" in first
    assert "Stored history of session 'demo' (6 items)" in first
    db = tmp_path / "lattice-demo.db"
    assert [text for role, text in asyncio.run(stored_turns(db)) if role == "user"] == list(
        FIRST_RUN_SCRIPT
    )

    second = run_demo(tmp_path)
    assert "Continuing a conversation with 6 stored items from earlier runs." in second
    assert "3 turns came before this one. Yes: you told me your name is Ada." in second
    assert "4 turns came before this one. You first said “Hi! My name is Ada.”" in second
    assert "Stored history of session 'demo' (10 items)" in second
    turns = asyncio.run(stored_turns(db))
    assert [text for role, text in turns if role == "user"] == [
        *FIRST_RUN_SCRIPT,
        *NEXT_RUN_SCRIPT,
    ]
    assert [role for role, _ in turns] == ["user", "assistant"] * 5


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    for name in ("OPENAI_API_KEY", "LATTICE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner(env={"COLUMNS": "200"})


def test_demo_on_any_backend_with_url(cli: CliRunner, fresh_url: str) -> None:
    first = cli.invoke(
        app, ["demo", "--url", fresh_url, "--session", "ada", "-m", "My name is Ada."]
    )
    assert first.exit_code == 0, first.output
    assert "Starting a new conversation." in first.output
    second = cli.invoke(app, ["demo", "--url", fresh_url, "--session", "ada", "-m", "My name?"])
    assert second.exit_code == 0, second.output
    assert "Continuing a conversation with 2 stored items" in second.output
    assert "1 turn came before this one. Yes: you told me your name is Ada." in second.output
    assert "Stored history of session 'ada' (4 items)" in second.output
    assert not Path("lattice-demo.db").exists()  # --url: nothing written locally

    third = cli.invoke(app, ["demo", "--url", fresh_url, "--session", "ada", "--reset"])
    assert third.exit_code == 0, third.output
    assert "--reset: the stored conversation was cleared." in third.output
    assert "Starting a new conversation." in third.output
    assert "Hello, Ada! This is the first turn" in third.output
    assert "(6 items)" in third.output


def test_interactive_mode(cli: CliRunner) -> None:
    result = cli.invoke(
        app, ["demo", "--interactive", "-m", "My name is Bo."], input="What did I say?\n\n"
    )
    assert result.exit_code == 0, result.output
    assert "1 turn came before this one. You told me: “My name is Bo.”" in result.output
    assert "(4 items)" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "not a url"], "not a database URL"),
        (["--base-url", "http://127.0.0.1:9/v1"], "--base-url needs --model"),
    ],
)
def test_bad_options_are_named(cli: CliRunner, args: list[str], message: str) -> None:
    result = cli.invoke(app, ["demo", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_unreachable_database_is_a_clear_error(cli: CliRunner) -> None:
    result = cli.invoke(app, ["demo", "--url", "postgresql+asyncpg://root@127.0.0.1:9/none"])
    assert result.exit_code == 1
    assert "error: cannot reach the database" in result.output


@pytest.fixture
def chat_server() -> Iterator[tuple[str, list[list[dict[str, Any]]]]]:
    """An OpenAI-compatible Chat Completions server that answers with a message count."""
    received: list[list[dict[str, Any]]] = []

    class Handler(JSONHandler):
        def do_POST(self) -> None:
            body = self.read_json()
            assert self.path == "/v1/chat/completions", self.path
            received.append(body["messages"])
            reply = f"I was sent {len(body['messages'])} messages."
            choice = {"index": 0, "message": {"role": "assistant", "content": reply}}
            self.send_json(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{**choice, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )

    with serve(Handler) as base_url:
        yield base_url, received


def test_openai_compatible_server(
    cli: CliRunner, chat_server: tuple[str, list[list[dict[str, Any]]]]
) -> None:
    base_url, received = chat_server
    args = ["demo", "--base-url", base_url, "--model", "local-model"]
    first = cli.invoke(app, [*args, "-m", "My name is Di."])
    assert first.exit_code == 0, first.output
    assert f"Model: local-model at {base_url}" in first.output
    second = cli.invoke(app, [*args, "-m", "My name?"])
    assert second.exit_code == 0, second.output
    assert "I was sent 4 messages." in second.output  # instructions + 3 from the session
    assert [(m["role"], m["content"]) for m in received[1]] == [
        ("system", received[1][0]["content"]),
        ("user", "My name is Di."),
        ("assistant", "I was sent 2 messages."),
        ("user", "My name?"),
    ]


def test_compose_reply() -> None:
    assert compose_reply([]) == "I was given no message from you."
    assert compose_reply([("user", "hi")]).startswith("Hello! This is the first turn")
    history = [("user", "I like tea"), ("assistant", "Noted."), ("user", "and cake")]
    assert compose_reply([*history, ("user", "What's my name?")]) == (
        "2 turns came before this one. You have not told me your name."
    )
    assert compose_reply([*history, ("user", "What did I say so far?")]) == (
        "2 turns came before this one. You told me: “I like tea”; “and cake”"
    )
    assert compose_reply([*history, ("user", "bye")]) == (
        "2 turns came before this one. You first said “I like tea”, and just before this “and cake”"
    )


async def test_offline_model_streams(tmp_path: Path) -> None:
    session = SQLiteSession("s", tmp_path / "s.db")
    await session.add_items([{"role": "user", "content": "My name is Cy."}])
    agent = Agent(name="A", model=OfflineMemoryModel())
    result = Runner.run_streamed(
        agent, "My name?", session=session, run_config=RunConfig(tracing_disabled=True)
    )
    async for _ in result.stream_events():
        pass
    assert result.final_output == "1 turn came before this one. Yes: you told me your name is Cy."
    assert transcript(await session.get_items())[-1] == ("assistant", result.final_output)
    await dispose_engines()
