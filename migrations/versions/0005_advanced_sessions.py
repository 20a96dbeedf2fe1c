"""Advanced sessions: branches, their segments, item structure and turn usage.

``agent_sessions_branches`` (one row per branch ever made, kept so an id is
never reused), ``agent_messages_segments`` (a branch's items as ranges of
message ids: branching references item bodies, it does not copy them),
``agent_messages_structure`` (each item's type, turn and tool) and
``agent_sessions_turn_usage`` (token usage per branch and turn). See
``lattice.schema_advanced``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lattice.schema import CurrentTimestamp, SessionId, UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen as this revision creates them.
SESSIONS = "agent_sessions"
BRANCHES = "agent_sessions_branches"
SEGMENTS = "agent_messages_segments"
STRUCTURE = "agent_messages_structure"
USAGE = "agent_sessions_turn_usage"
MESSAGE_TYPE_LENGTH = 64
TOOL_NAME_LENGTH = 255
RUN_KEY_LENGTH = 32


def upgrade() -> None:
    dialect_name = op.get_context().dialect.name
    options = (
        {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
        if dialect_name in ("mysql", "mariadb")
        else {}
    )
    order_key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        BRANCHES,
        sa.Column("session_id", SessionId(), primary_key=True),
        sa.Column("branch_id", SessionId(), primary_key=True),
        sa.Column("parent_branch_id", SessionId(), nullable=True),
        sa.Column("from_turn", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(1), nullable=False, server_default="a"),
        sa.Column("last_turn", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        sa.ForeignKeyConstraint(
            ["session_id"],
            [f"{SESSIONS}.session_id"],
            name=f"fk_{BRANCHES}_session_id",
            ondelete="CASCADE",
        ),
        **options,
    )
    op.create_table(
        SEGMENTS,
        sa.Column("session_id", SessionId(), primary_key=True),
        sa.Column("branch_id", SessionId(), primary_key=True),
        sa.Column("first_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id", "branch_id"],
            [f"{BRANCHES}.session_id", f"{BRANCHES}.branch_id"],
            name=f"fk_{SEGMENTS}_branch",
            ondelete="CASCADE",
        ),
        **options,
    )
    op.create_index(f"ix_{SEGMENTS}_range", SEGMENTS, ["session_id", "first_id"])
    op.create_table(
        STRUCTURE,
        sa.Column("message_id", order_key, primary_key=True, autoincrement=False),
        sa.Column("session_id", SessionId(), nullable=False),
        sa.Column("message_type", sa.String(MESSAGE_TYPE_LENGTH), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("tool_name", sa.String(TOOL_NAME_LENGTH), nullable=True),
        # No foreign key to agent_messages: it may be hash-partitioned on
        # PostgreSQL (key (session_id, id)); see lattice.schema_advanced.
        sa.ForeignKeyConstraint(
            ["session_id"],
            [f"{SESSIONS}.session_id"],
            name=f"fk_{STRUCTURE}_session_id",
            ondelete="CASCADE",
        ),
        **options,
    )
    op.create_index(f"ix_{STRUCTURE}_turn", STRUCTURE, ["session_id", "turn"])
    op.create_table(
        USAGE,
        sa.Column("session_id", SessionId(), primary_key=True),
        sa.Column("branch_id", SessionId(), primary_key=True),
        sa.Column("turn", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("input_tokens_details", sa.Text(), nullable=True),
        sa.Column("output_tokens_details", sa.Text(), nullable=True),
        sa.Column("run_key", sa.String(RUN_KEY_LENGTH), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False, server_default=CurrentTimestamp()),
        sa.ForeignKeyConstraint(
            ["session_id", "branch_id"],
            [f"{BRANCHES}.session_id", f"{BRANCHES}.branch_id"],
            name=f"fk_{USAGE}_branch",
            ondelete="CASCADE",
        ),
        **options,
    )


def downgrade() -> None:
    # The tables take their indexes with them (on MySQL an index a foreign key
    # uses cannot be dropped first).
    for table in (USAGE, STRUCTURE, SEGMENTS, BRANCHES):
        op.drop_table(table)
