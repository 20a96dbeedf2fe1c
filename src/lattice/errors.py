"""Exceptions Lattice raises beyond the built-in ``TypeError`` and ``ValueError``."""

from __future__ import annotations

from typing import Any

__all__ = [
    "LatticeError",
    "LockTimeoutError",
    "PutBackFailedError",
    "SchemaNotReadyError",
    "WriteOutcomeUnknownError",
]


class LatticeError(Exception):
    """Base class of Lattice's own exceptions."""


class WriteOutcomeUnknownError(LatticeError):
    """The connection died while a write committed, and the database could not be asked.

    The write may or may not have committed. ``result`` holds what the write
    had produced: for ``pop_item``, the item it removed, so a popped item is
    never silently lost.
    """

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class PutBackFailedError(LatticeError):
    """A cancelled ``pop_item`` removed its item, and putting it back failed.

    Raised instead of the cancellation, so the item is not lost: ``item``
    (also ``result``) holds it. The cause (a lock timeout, a lost connection,
    a put-back that could no longer prove the session unchanged) is chained.
    """

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.result = result

    @property
    def item(self) -> Any:
        """The popped item (the same object as ``result``)."""
        return self.result


class LockTimeoutError(LatticeError, TimeoutError):
    """A write waited longer than the lock timeout for another transaction's lock.

    The write did not happen: the server gave up waiting before anything of it
    committed, and the transaction was rolled back. The bound is the engine's
    lock timeout (``lock_timeout`` in ``engine_kwargs`` for engines Lattice
    makes, :func:`lattice.engines.limit_lock_waits` for your own; see
    docs/guarantees.md). The database's error is chained.
    """


class SchemaNotReadyError(LatticeError):
    """Lattice's tables are missing from the database, or older than this Lattice.

    The message says which, with the database's own words and the command that
    fixes it (``lattice db upgrade``). The database's error is chained.
    """
