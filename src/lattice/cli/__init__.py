"""The ``lattice`` command: ``lattice db ...``, ``lattice sessions ...``, ``lattice demo``."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from .. import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    name="lattice",
    help="Lattice: durable conversation memory for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help: rich help showed "<bool>" as the value of every flag.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lattice {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Lattice: durable conversation memory for AI agents."""


def _register() -> None:
    # Each command group lives in its own module and registers itself here.
    from importlib import import_module

    for module_name in ("db", "sessions", "demo"):
        try:
            module = import_module(f".{module_name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module_name}":
                raise
            continue
        module.register(app)


_register()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Handled as Ctrl-C is: asyncio cancels the command's task, so its
    # cleanup runs (an export removes its .partial file, transactions roll back).
    signal.raise_signal(signal.SIGINT)


def main() -> None:
    """Entry point of the ``lattice`` console script."""
    signal.signal(signal.SIGTERM, _interrupt)
    app()
