"""The session catalogue: metadata, owner, and the indexes listing and retention use.

* ``agent_sessions.session_metadata``: the application's JSON metadata, as
  text (NULL: none).
* ``agent_sessions.owner``: a copy of the metadata's ``"owner"`` key, so that
  listing, counting and deleting by owner use an index.
* ``ix_agent_sessions_updated_at (updated_at, session_id)``: newest-activity
  order for keyset pagination, and the range ``purge`` deletes by.
* ``ix_agent_sessions_owner (owner, updated_at, session_id)``: the same per owner.

Both columns are nullable and new, so existing rows need no backfill and
every dialect adds them in place (SQLite included, without a rebuild).

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lattice.schema import SessionId

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SESSIONS = "agent_sessions"
UPDATED_INDEX = f"ix_{SESSIONS}_updated_at"
OWNER_INDEX = f"ix_{SESSIONS}_owner"


def upgrade() -> None:
    op.add_column(SESSIONS, sa.Column("session_metadata", sa.Text(), nullable=True))
    op.add_column(SESSIONS, sa.Column("owner", SessionId(), nullable=True))
    op.create_index(UPDATED_INDEX, SESSIONS, ["updated_at", "session_id"])
    op.create_index(OWNER_INDEX, SESSIONS, ["owner", "updated_at", "session_id"])


def downgrade() -> None:
    op.drop_index(OWNER_INDEX, table_name=SESSIONS)
    op.drop_index(UPDATED_INDEX, table_name=SESSIONS)
    if op.get_context().dialect.name == "sqlite":
        # SQLite 3.35+ drops a column in place; Alembic's plain drop_column
        # would ask for batch mode, which rebuilds the table (and, with foreign
        # keys on, would cascade-delete every message).
        op.execute(f"ALTER TABLE {SESSIONS} DROP COLUMN owner")
        op.execute(f"ALTER TABLE {SESSIONS} DROP COLUMN session_metadata")
        return
    op.drop_column(SESSIONS, "owner")
    op.drop_column(SESSIONS, "session_metadata")
