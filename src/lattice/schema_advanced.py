"""The tables of advanced sessions: branches, their segments, item structure, turn usage.

Built by :func:`lattice.schema.lattice_tables` on the same ``MetaData`` as
the session and message tables, so ``create_tables=True`` and ``lattice db
upgrade`` (revision 0005) make them for every naming. Names follow the base
tables': ``agent_sessions_branches``, ``agent_sessions_turn_usage``,
``agent_messages_structure``, ``agent_messages_segments``.

How a branch holds its items without copying them:

``..._structure``
    One row per stored item, written with the item: its type, the turn it
    belongs to and the tool it names. An item's turn never changes, because
    a branch only ever inherits whole earlier turns of its parent.
``..._segments``
    A branch's items as ranges of message ids ``[first_id, last_id]`` of its
    session. Every append adds one segment (a batch is contiguous among its
    session's rows, because writers of a session serialise on its row), and
    a new branch copies its parent's segments that lie before the turn it
    starts from, clipping the last one: a branch of a 10,000-item
    conversation costs one row per segment, O(turns), and no item body.
    A message row stays while any segment of any branch covers it.
``..._branches``
    One row per branch ever made in a session, kept after the branch is
    deleted (``state`` ``"d"``) or the session cleared (``"c"``) so that a
    branch id is never reused, as in the Agents SDK. ``last_turn`` is the
    branch's newest turn number.
``..._turn_usage``
    Token usage per (branch, turn), written by ``store_run_usage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "BRANCH_ACTIVE",
    "BRANCH_CLEARED",
    "BRANCH_DELETED",
    "MAIN_BRANCH",
    "MESSAGE_TYPE_LENGTH",
    "RUN_KEY_LENGTH",
    "TOOL_NAME_LENGTH",
    "USAGE_VALUE_COLUMNS",
    "AdvancedTables",
    "advanced_table_names",
    "advanced_tables",
    "define_advanced_tables",
]

MAIN_BRANCH = "main"
BRANCH_ACTIVE = "a"
BRANCH_DELETED = "d"
BRANCH_CLEARED = "c"
#: Longer item types and tool names are stored cut to these lengths.
MESSAGE_TYPE_LENGTH = 64
TOOL_NAME_LENGTH = 255
RUN_KEY_LENGTH = 32
#: The columns of a usage row that a run's usage fills (beside its key and time).
USAGE_VALUE_COLUMNS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_tokens_details",
    "output_tokens_details",
    "run_key",
)


@dataclass(frozen=True)
class AdvancedTables:
    """The four tables of advanced sessions for one pair of base tables (see the module doc)."""

    branches: Table
    segments: Table
    structure: Table
    usage: Table


def advanced_table_names(sessions_table: str, messages_table: str) -> tuple[str, str, str, str]:
    """The names of (branches, segments, structure, usage) for the base tables."""
    return (
        f"{sessions_table}_branches",
        f"{messages_table}_segments",
        f"{messages_table}_structure",
        f"{sessions_table}_turn_usage",
    )


def define_advanced_tables(
    meta: MetaData, sessions_table: str, messages_table: str, schema: Any
) -> None:
    """Add the advanced tables to ``meta`` (called by :func:`lattice.schema.lattice_tables`).

    ``schema`` is the :mod:`lattice.schema` module, which owns the portable
    column types (passed in, so that the two modules import in one direction).
    """
    SessionId, UtcDateTime = schema.SessionId, schema.UtcDateTime
    CurrentTimestamp, object_name = schema.CurrentTimestamp, schema.object_name
    branches_name, segments_name, structure_name, usage_name = advanced_table_names(
        sessions_table, messages_table
    )
    options = schema.MYSQL_TABLE_OPTIONS
    Table(
        branches_name,
        meta,
        Column(
            "session_id",
            SessionId(),
            ForeignKey(
                f"{sessions_table}.session_id",
                ondelete="CASCADE",
                name=object_name("fk", branches_name, "session_id"),
            ),
            primary_key=True,
        ),
        # Compared exactly, like a session id (binary on MySQL).
        Column("branch_id", SessionId(), primary_key=True),
        Column("parent_branch_id", SessionId(), nullable=True),
        Column("from_turn", Integer(), nullable=True),
        Column("state", String(1), nullable=False, server_default=BRANCH_ACTIVE),
        Column("last_turn", Integer(), nullable=False, server_default="0"),
        Column("created_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        **options,
    )
    Table(
        segments_name,
        meta,
        Column("session_id", SessionId(), primary_key=True),
        Column("branch_id", SessionId(), primary_key=True),
        Column("first_id", BigInteger(), primary_key=True, autoincrement=False),
        Column("last_id", BigInteger(), nullable=False),
        ForeignKeyConstraint(
            ["session_id", "branch_id"],
            [f"{branches_name}.session_id", f"{branches_name}.branch_id"],
            name=object_name("fk", segments_name, "branch"),
            ondelete="CASCADE",
        ),
        # "Does another branch still cover this message?"
        Index(object_name("ix", segments_name, "range"), "session_id", "first_id"),
        **options,
    )
    Table(
        structure_name,
        meta,
        # No foreign key to the messages table: on PostgreSQL it may be
        # hash-partitioned (key (session_id, id), no unique id to point at).
        # Advanced sessions delete an item's structure with the item; a
        # store's delete of the session takes it through session_id.
        Column("message_id", schema.ORDER_KEY, primary_key=True, autoincrement=False),
        Column(
            "session_id",
            SessionId(),
            ForeignKey(
                f"{sessions_table}.session_id",
                ondelete="CASCADE",
                name=object_name("fk", structure_name, "session_id"),
            ),
            nullable=False,
        ),
        Column("message_type", String(MESSAGE_TYPE_LENGTH), nullable=False),
        Column("turn", Integer(), nullable=False),
        Column("tool_name", String(TOOL_NAME_LENGTH), nullable=True),
        Index(object_name("ix", structure_name, "turn"), "session_id", "turn"),
        **options,
    )
    Table(
        usage_name,
        meta,
        Column("session_id", SessionId(), primary_key=True),
        Column("branch_id", SessionId(), primary_key=True),
        Column("turn", Integer(), primary_key=True, autoincrement=False),
        Column("requests", BigInteger(), nullable=False, server_default="0"),
        Column("input_tokens", BigInteger(), nullable=False, server_default="0"),
        Column("output_tokens", BigInteger(), nullable=False, server_default="0"),
        Column("total_tokens", BigInteger(), nullable=False, server_default="0"),
        Column("input_tokens_details", Text(), nullable=True),
        Column("output_tokens_details", Text(), nullable=True),
        # The run that wrote the row (a retried store_run_usage finds its own).
        Column("run_key", String(RUN_KEY_LENGTH), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        ForeignKeyConstraint(
            ["session_id", "branch_id"],
            [f"{branches_name}.session_id", f"{branches_name}.branch_id"],
            name=object_name("fk", usage_name, "branch"),
            ondelete="CASCADE",
        ),
        **options,
    )


def advanced_tables(tables: Any) -> AdvancedTables:
    """The advanced tables that belong with ``tables``, a :class:`lattice.schema.LatticeTables`."""
    names = advanced_table_names(tables.sessions.name, tables.messages.name)
    found = [tables.metadata.tables[name] for name in names]
    return AdvancedTables(*found)
