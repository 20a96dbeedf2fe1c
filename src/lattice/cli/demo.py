"""``lattice demo``: a conversation through the Agents SDK Runner that remembers.

By default it talks to an offline model (no key, no network) that answers
from the stored history, on the SQLite file ``./lattice-demo.db``. Run it
twice: the second process continues the conversation the first one stored.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["FIRST_RUN_SCRIPT", "NEXT_RUN_SCRIPT", "register"]

DEFAULT_DB = "lattice-demo.db"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
INSTRUCTIONS = (
    "You are a friendly assistant in a demo of conversation memory. Reply in one or two "
    "short sentences. When asked, say what the user told you earlier in this conversation."
)
# The user's side of the conversation when no --message is given: one script
# for a new conversation, another for a conversation stored by an earlier run.
FIRST_RUN_SCRIPT = (
    "Hi! My name is Ada.",
    "I am building a support bot that has to remember its users.",
    "What have I told you so far?",
)
NEXT_RUN_SCRIPT = (
    "I'm back, from a new process. Do you remember my name?",
    "How many turns came before this one?",
)


@dataclass
class DemoOptions:
    url: str | None
    session_id: str
    reset: bool
    messages: list[str]
    interactive: bool
    model: str | None
    base_url: str | None
    offline: bool


def _agents() -> Any:
    try:
        import agents
    except ImportError:
        raise typer.BadParameter(
            "the demo runs the OpenAI Agents SDK, which is not installed; "
            "pip install 'lattice-sessions[agents]'"
        ) from None
    return agents


def _make_model(options: DemoOptions) -> tuple[Any, str, bool]:
    """The model, a description of it, and whether tracing stays off."""
    if options.base_url:
        if not options.model:
            raise typer.BadParameter("--base-url needs --model (the server's model name)")
        from agents import OpenAIChatCompletionsModel
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            base_url=options.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "unused"
        )
        model = OpenAIChatCompletionsModel(model=options.model, openai_client=client)
        return model, f"{options.model} at {options.base_url}", True
    if os.environ.get("OPENAI_API_KEY") and not options.offline:
        name = options.model or DEFAULT_OPENAI_MODEL
        return name, f"OpenAI {name}", False
    from ..integrations.offline_model import OfflineMemoryModel

    why = "--offline" if options.offline else "no OPENAI_API_KEY"
    return OfflineMemoryModel(), f"offline memory model ({why})", True


def _make_session(options: DemoOptions) -> tuple[Any, str]:
    from .. import SQLAlchemySession, SQLiteSession, urls

    try:
        if options.url:
            session = SQLAlchemySession.from_url(
                options.session_id, url=options.url, create_tables=True
            )
            where = urls.shown(session.engine.url)
            return session, where
        return SQLiteSession(options.session_id, DEFAULT_DB), os.path.abspath(DEFAULT_DB)
    except (TypeError, ValueError, ImportError) as exc:
        raise typer.BadParameter(str(exc)) from exc


def _user_turns(options: DemoOptions, stored: int) -> list[str]:
    if options.messages:
        return list(options.messages)
    if options.interactive:
        return []
    return list(NEXT_RUN_SCRIPT if stored else FIRST_RUN_SCRIPT)


def _history_table(session_id: str, items: list[dict[str, Any]]) -> Table:
    from ..integrations.transcript import transcript

    table = Table(title=f"Stored history of session {session_id!r} ({len(items)} items)")
    table.add_column("#", justify="right", style="dim")
    table.add_column("role", style="bold")
    table.add_column("text", overflow="fold")
    for number, (role, text) in enumerate(transcript(items), start=1):
        table.add_row(str(number), role, text)
    return table


async def _run(options: DemoOptions, console: Console) -> None:
    # Importing the SDK takes about 2.4 s (python -X importtime, openai-agents 0.24).
    with console.status("loading the OpenAI Agents SDK..."):
        agents = _agents()
    from .. import dispose_engines

    model, model_label, no_tracing = _make_model(options)
    session, where = _make_session(options)
    agent = agents.Agent(name="Lattice demo", instructions=INSTRUCTIONS, model=model)
    config = agents.RunConfig(tracing_disabled=no_tracing)
    try:
        if options.reset:
            await session.clear_session()
            console.print("[yellow]--reset: the stored conversation was cleared.[/]")
        stored = len(await session.get_items())
        console.print(f"Database: [cyan]{where}[/]   session: [cyan]{options.session_id}[/]")
        console.print(f"Model: [cyan]{model_label}[/]")
        if stored:
            console.print(
                f"[green]Continuing a conversation with {stored} stored items from earlier runs.[/]"
            )
        else:
            console.print("[green]Starting a new conversation.[/]")
        console.print()

        async def turn(message: str) -> None:
            console.print(f"[bold blue]you[/]   {message}")
            with console.status("the agent is thinking..."):
                result = await agents.Runner.run(agent, message, session=session, run_config=config)
            console.print(f"[bold green]agent[/] {result.final_output}\n")

        for message in _user_turns(options, stored):
            await turn(message)
        while options.interactive:
            message = await asyncio.to_thread(_prompt, console)
            if not message:
                break
            await turn(message)

        console.print(_history_table(options.session_id, await session.get_items()))
        console.print(
            "Run [bold]lattice demo[/] again: the next process continues this conversation. "
            "[bold]--reset[/] starts over."
        )
    finally:
        await dispose_engines()


def _prompt(console: Console) -> str:
    """The user's next message; empty at the end (empty line, EOF, /quit)."""
    try:
        text = console.input("[bold blue]you[/]   ").strip()
    except EOFError:
        return ""
    return "" if text in ("/quit", "/exit") else text


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""

    @app.command("demo")
    def demo(
        url: str | None = typer.Option(
            None,
            "--url",
            metavar="URL",
            envvar="LATTICE_DATABASE_URL",
            help=f"Database URL (any backend). Default: the SQLite file ./{DEFAULT_DB}.",
        ),
        session_id: str = typer.Option(
            "demo", "--session", metavar="ID", help="The conversation's id."
        ),
        reset: bool = typer.Option(False, "--reset", help="Clear the stored conversation first."),
        messages: list[str] = typer.Option(  # noqa: B008 - typer's declaration style
            [],
            "--message",
            "-m",
            metavar="TEXT",
            help="Send this message instead of the script (repeatable).",
        ),
        interactive: bool = typer.Option(
            False, "--interactive", "-i", help="Then type your own messages (empty line ends)."
        ),
        model: str | None = typer.Option(
            None,
            "--model",
            metavar="MODEL",
            help=f"Model name (default with OPENAI_API_KEY: {DEFAULT_OPENAI_MODEL}).",
        ),
        base_url: str | None = typer.Option(
            None,
            "--base-url",
            metavar="URL",
            help="An OpenAI-compatible server (Chat Completions); needs --model.",
        ),
        offline: bool = typer.Option(
            False, "--offline", help="Use the offline model even when OPENAI_API_KEY is set."
        ),
    ) -> None:
        """Hold a conversation through the Agents SDK Runner and show what was stored.

        Without OPENAI_API_KEY (or --base-url and --model) an offline model answers
        from the stored history. Run it twice: the second run remembers the first.
        """
        options = DemoOptions(
            url=url,
            session_id=session_id,
            reset=reset,
            messages=messages,
            interactive=interactive,
            model=model,
            base_url=base_url,
            offline=offline,
        )
        console = Console()
        try:
            asyncio.run(_run(options, console))
        except typer.BadParameter:
            raise
        except (OSError, ConnectionError) as exc:
            console.print(f"[red]error:[/] cannot reach the database: {exc}")
            raise typer.Exit(1) from exc
        except Exception as exc:
            from sqlalchemy.exc import DBAPIError

            if not isinstance(exc, DBAPIError):
                raise
            console.print(f"[red]error:[/] the database refused: {exc.orig}")
            raise typer.Exit(1) from exc
