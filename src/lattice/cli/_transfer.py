"""Helpers of ``lattice sessions import`` and ``copy``: sources, totals, which side failed."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import IO

from sqlalchemy.exc import DBAPIError

from ..errors import LatticeError

__all__ = ["SideError", "import_source", "on_side"]

_GZIP_MAGIC = b"\x1f\x8b"
_TAIL_BYTES = 4096


class SideError(Exception):
    """A database error of one side of a copy: ``side`` says which (source or target)."""

    def __init__(self, side: str, cause: DBAPIError | OSError | LatticeError) -> None:
        super().__init__(side)
        self.side = side
        self.cause = cause


@asynccontextmanager
async def on_side(side: str) -> AsyncIterator[None]:
    """Re-raise database, Lattice and OS errors in the block as :class:`SideError` of ``side``."""
    try:
        yield
    except (DBAPIError, OSError, LatticeError) as exc:
        raise SideError(side, exc) from exc


def _end_total(handle: IO[bytes]) -> int | None:
    """The item count of an export's end line (its last line), or None."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - _TAIL_BYTES))
    lines = handle.read().rstrip(b"\n").rsplit(b"\n", 1)
    handle.seek(0)
    try:
        end = json.loads(lines[-1])
    except ValueError:
        return None
    if isinstance(end, dict) and end.get("type") == "end" and isinstance(end.get("items"), int):
        return int(end["items"])
    return None


@contextmanager
def import_source(source: str) -> Iterator[tuple[IO[str], int | None]]:
    """A seekable text handle on ``source`` and its item count, for the progress bar.

    ``-`` reads standard input (into a temporary file: the import reads its
    source twice, once to check it); a gzip-compressed file is decompressed
    the same way, so ``backup.jsonl.gz`` imports as it is.

    Raises:
        ValueError: a damaged gzip file.
        OSError: the file cannot be read.
    """
    with ExitStack() as stack:
        raw: IO[bytes] = (
            sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
        )
        head = raw.read(2)
        data: IO[bytes] = raw
        if source == "-" or head == _GZIP_MAGIC:
            data = stack.enter_context(tempfile.TemporaryFile())
            data.write(head)
            shutil.copyfileobj(raw, data)
            if head == _GZIP_MAGIC:
                packed, data = data, stack.enter_context(tempfile.TemporaryFile())
                packed.seek(0)
                try:
                    with gzip.GzipFile(fileobj=packed) as stream:
                        shutil.copyfileobj(stream, data)
                except (OSError, EOFError) as exc:
                    raise ValueError(f"{source}: a damaged gzip file ({exc})") from None
        total = _end_total(data)
        text = stack.enter_context(open(data.fileno(), encoding="utf-8", closefd=False))
        yield text, total
