"""The write journal: exact outcomes of writes whose COMMIT reply was lost.

``agent_sessions_journal`` holds one row per committed write of a session
(append, pop, clear, put-back; a store's delete adds one per session),
written in the write's own transaction and pruned by age (an hour by the
database server's clock; ``lattice.writes.JOURNAL_WINDOW_S``). It answers
whether a write committed however many writes followed it, and whether a
session was cleared or deleted after a pop. It replaces the ring of the last
eight write tokens, which later traffic could evict. The ring column stays:
its newest token is still what asyncpg's one-statement pop compares.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lattice.schema import SessionId

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen as this revision creates them.
JOURNAL = "agent_sessions_journal"
TOKEN_LENGTH = 32


def upgrade() -> None:
    dialect_name = op.get_context().dialect.name
    options = (
        {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
        if dialect_name in ("mysql", "mariadb")
        else {}
    )
    order_key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        JOURNAL,
        sa.Column("seq", order_key, primary_key=True, autoincrement=True),
        sa.Column("token", sa.String(TOKEN_LENGTH), nullable=False),
        sa.Column("session_id", SessionId(), nullable=False),
        sa.Column("kind", sa.String(1), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        **options,
    )
    op.create_index(f"ix_{JOURNAL}_token", JOURNAL, ["token"], unique=True)
    op.create_index(f"ix_{JOURNAL}_session", JOURNAL, ["session_id", "seq"])
    op.create_index(f"ix_{JOURNAL}_at", JOURNAL, ["at_ms"])


def downgrade() -> None:
    op.drop_index(f"ix_{JOURNAL}_at", table_name=JOURNAL)
    op.drop_index(f"ix_{JOURNAL}_session", table_name=JOURNAL)
    op.drop_index(f"ix_{JOURNAL}_token", table_name=JOURNAL)
    op.drop_table(JOURNAL)
