"""The OpenAI Agents SDK's tables, as its SQLAlchemySession(create_tables=True) makes them.

This is the schema of ``agents.extensions.memory.SQLAlchemySession`` (0.24)
on PostgreSQL and SQLite, so a database made by the SDK is at this revision
and ``lattice db upgrade`` carries it forward in place. The SDK cannot create
its tables on MySQL (a ``VARCHAR`` needs a length there); on MySQL this
baseline is Lattice's own, with the lengths MySQL requires.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SESSIONS = "agent_sessions"
MESSAGES = "agent_messages"
SDK_INDEX = f"idx_{MESSAGES}_session_time"


def _definitions(
    dialect_name: str, fk_name: str | None
) -> dict[str, tuple[list[Any], dict[str, Any]]]:
    """Fresh columns, constraints and options of each table (SchemaItems belong to one table)."""
    mysql = dialect_name in ("mysql", "mariadb")
    key = sa.String(255) if mysql else sa.String()
    options: dict[str, Any] = (
        {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"} if mysql else {}
    )
    now = sa.text("CURRENT_TIMESTAMP")
    return {
        SESSIONS: (
            [
                sa.Column("session_id", key, primary_key=True),
                sa.Column("created_at", sa.TIMESTAMP(), server_default=now, nullable=False),
                sa.Column("updated_at", sa.TIMESTAMP(), server_default=now, nullable=False),
            ],
            options,
        ),
        MESSAGES: (
            [
                sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
                sa.Column("session_id", key, nullable=False),
                sa.Column("message_data", sa.Text(), nullable=False),
                sa.Column("created_at", sa.TIMESTAMP(), server_default=now, nullable=False),
                sa.ForeignKeyConstraint(
                    ["session_id"],
                    [f"{SESSIONS}.session_id"],
                    ondelete="CASCADE",
                    name=fk_name,
                ),
            ],
            {"sqlite_autoincrement": True, **options},
        ),
    }


def sdk_tables(dialect_name: str, *, fk_name: str | None = None) -> tuple[sa.Table, sa.Table]:
    """The two tables as this revision leaves them (revision 0002 rebuilds from these)."""
    meta = sa.MetaData()
    tables = {
        name: sa.Table(name, meta, *items, **options)
        for name, (items, options) in _definitions(dialect_name, fk_name).items()
    }
    sa.Index(SDK_INDEX, tables[MESSAGES].c.session_id, tables[MESSAGES].c.created_at)
    return tables[SESSIONS], tables[MESSAGES]


def upgrade() -> None:
    for name, (items, options) in _definitions(op.get_context().dialect.name, None).items():
        op.create_table(name, *items, **options)
    op.create_index(SDK_INDEX, MESSAGES, ["session_id", "created_at"])


def downgrade() -> None:
    op.drop_table(MESSAGES)
    op.drop_table(SESSIONS)
