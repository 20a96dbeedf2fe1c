"""Lattice: durable conversation memory for AI agents, on async SQLAlchemy.

The public names::

    from lattice import (
        Session, SessionABC, SessionSettings,
        SQLAlchemySession, SQLiteSession,
        OpenAIConversationsSession,
        SessionStore, SessionInfo, SessionPage,
        DeleteResult, ExportResult, ImportResult,
    )
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .engines import dispose_engines
from .errors import LatticeError, LockTimeoutError, WriteOutcomeUnknownError
from .protocol import Session, SessionABC
from .sqlalchemy_session import SQLAlchemySession
from .sqlite_session import SQLiteSession

if TYPE_CHECKING:
    from .openai_conversations import OpenAIConversationsSession
    from .protocol import SessionSettings
    from .store import SessionPage, SessionStore
    from .store.model import DeleteResult, ExportResult, ImportResult, SessionInfo

__all__ = [
    "DeleteResult",
    "ExportResult",
    "ImportResult",
    "LatticeError",
    "LockTimeoutError",
    "OpenAIConversationsSession",
    "SQLAlchemySession",
    "SQLiteSession",
    "Session",
    "SessionABC",
    "SessionInfo",
    "SessionPage",
    "SessionSettings",
    "SessionStore",
    "WriteOutcomeUnknownError",
    "dispose_engines",
]

__version__ = "0.1.0"

# Names whose modules are imported on first use: the OpenAI client is an
# optional extra, the store pulls in more than a session needs, and
# SessionSettings is the Agents SDK's class when it is installed (which takes
# seconds to import; see lattice.protocol).
_LAZY = {
    "OpenAIConversationsSession": ".openai_conversations",
    "SessionSettings": ".protocol",
    "SessionStore": ".store",
    "SessionPage": ".store",
    "SessionInfo": ".store.model",
    "DeleteResult": ".store.model",
    "ExportResult": ".store.model",
    "ImportResult": ".store.model",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lattice' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module_name, __name__), name)
    globals()[name] = value
    return value
