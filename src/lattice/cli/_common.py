"""What the ``lattice`` commands share: literal output, error exits, URL checks.

Everything printed here is plain text: ids, metadata, items, file names and
error messages come from users and databases, so they are never read as Rich
markup or emoji codes, and passwords are hidden (:func:`lattice.urls.redact`).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from .. import urls

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "err_console",
    "fail",
    "out_console",
    "usable_url",
]

#: The command ran and failed (database error, no such session, declined prompt).
EXIT_FAILED = 1
#: The command line is wrong, including a URL this installation cannot use.
EXIT_USAGE = 2


def _console(**options: Any) -> Console:
    return Console(highlight=False, soft_wrap=True, markup=False, emoji=False, **options)


#: Standard output: tables and items, printed literally.
out_console = _console()
#: Standard error: progress, messages, errors, printed literally.
err_console = _console(stderr=True)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` (passwords hidden) on stderr; the ``Exit`` to raise."""
    err_console.print(Text.assemble(("error:", "red"), " ", urls.redact(message)))
    return typer.Exit(code)




def usable_url(
    url: str | None, *, env_var: str, option: str = "--url", exists: bool = False
) -> str:
    """``url`` if Lattice can use it, else an error and exit 2 (exit 1: no such file).

    Args:
        url: The option's value.
        env_var: The environment variable the option falls back to (for the message).
        option: The option's name, for messages.
        exists: A read-only command: a SQLite file must already exist (SQLite
            would otherwise create an empty database at a mistyped path).

    Raises:
        typer.Exit: the URL is missing, malformed or unusable, or the file is missing.
    """
    if not url:
        raise fail(f"no database URL: pass {option} or set {env_var}", EXIT_USAGE)
    try:
        urls.connect_options(urls.normalize(url), {})
        path = urls.sqlite_path(url)
    except urls.UrlError as exc:
        raise fail(f"{option}: {exc}", EXIT_USAGE) from None
    if exists and path is not None and not path.is_file():
        raise fail(f"no SQLite database at {str(path)!r} (check the path in {option})")
    return url
