"""Lattice's schema: 64-bit ids, exact session ids, UTC microsecond timestamps, counts.

From the Agents SDK's tables (revision 0001) to Lattice's, in place:

* ``agent_messages.id`` becomes BIGINT (and its PostgreSQL sequence too).
* Session ids become ``VARCHAR(255)``; on MySQL ``VARBINARY(1020)``, which
  compares byte for byte (see ``lattice.schema.SessionId``).
* Timestamps become time-zone aware with microseconds. PostgreSQL reads the
  SDK's naive values in the server's ``TimeZone`` (the zone its
  ``CURRENT_TIMESTAMP`` wrote them in); MySQL converts them as UTC.
* ``agent_sessions`` gains ``item_count`` (counted from the rows already
  there) and ``write_tokens``; a session id found only among the messages
  gets its row (see ``_restore_missing_sessions``).
* The SDK's ``(session_id, created_at)`` index is replaced by
  ``(session_id, id)``, which orders by the key Lattice reads by.
* On MySQL the tables become utf8mb4 with a binary collation, and the payload
  LONGTEXT (the SDK's TEXT stops at 64 KiB).

SQLite cannot alter columns, so there both tables are rebuilt (batch mode)
with foreign keys off; ``lattice.migrations`` and ``lattice db`` switch them
off for the run.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from lattice.schema import SessionId, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SESSIONS = "agent_sessions"
MESSAGES = "agent_messages"
SDK_INDEX = f"idx_{MESSAGES}_session_time"
INDEX = f"ix_{MESSAGES}_session_id_id"
FK = f"fk_{MESSAGES}_session_id"
# The names the servers give the SDK's unnamed foreign key (used for --sql,
# where there is no database to ask).
# Frozen as this revision wrote them: a later change of the live schema's
# constants must not rewrite what an old revision did.
WRITE_TOKEN_LENGTH = 32
WRITE_TOKENS_KEPT = 8
_DEFAULT_FK = {"postgresql": f"{MESSAGES}_session_id_fkey", "mysql": f"{MESSAGES}_ibfk_1"}


def _baseline() -> ModuleType:
    script = op.get_context().script
    assert script is not None
    return script.get_revision(down_revision).module  # type: ignore[no-any-return]


def _is_mysql(dialect_name: str) -> bool:
    return dialect_name in ("mysql", "mariadb")


def _new_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("item_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column(
            "write_tokens",
            sa.String(WRITE_TOKEN_LENGTH * WRITE_TOKENS_KEPT),
            nullable=False,
            server_default="",
        ),
    ]


def _type_changes(dialect_name: str) -> list[tuple[str, str, Any, Any]]:
    """(table, column, SDK type, Lattice type) for every column that changes type."""
    sdk_key = sa.String(255) if _is_mysql(dialect_name) else sa.String()
    changes: list[tuple[str, str, Any, Any]] = [
        (SESSIONS, "session_id", sdk_key, SessionId()),
        (SESSIONS, "created_at", sa.TIMESTAMP(), UtcDateTime()),
        (SESSIONS, "updated_at", sa.TIMESTAMP(), UtcDateTime()),
        (MESSAGES, "session_id", sdk_key, SessionId()),
        (MESSAGES, "created_at", sa.TIMESTAMP(), UtcDateTime()),
    ]
    if dialect_name != "sqlite":  # the rowid stays INTEGER on SQLite
        changes.append((MESSAGES, "id", sa.Integer(), sa.BigInteger()))
    if _is_mysql(dialect_name):
        changes.append((MESSAGES, "message_data", sa.Text(), mysql.LONGTEXT()))
    return changes


def _alter_kwargs(dialect_name: str, column: str, *, upgrade: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"existing_nullable": False}
    if column == "id" and _is_mysql(dialect_name):
        kwargs["autoincrement"] = True
    elif column.endswith("_at") and _is_mysql(dialect_name):
        # MySQL's MODIFY restates the whole column, default included, and the
        # default's precision must match the column's.
        default = "CURRENT_TIMESTAMP(6)" if upgrade else "CURRENT_TIMESTAMP"
        kwargs["server_default"] = sa.text(default)
    return kwargs


def _sdk_fk_name(dialect_name: str) -> str:
    if op.get_context().as_sql:
        return _DEFAULT_FK["mysql" if _is_mysql(dialect_name) else dialect_name]
    for fk in sa.inspect(op.get_bind()).get_foreign_keys(MESSAGES):
        if fk["referred_table"] == SESSIONS and fk["name"]:
            return fk["name"]
    raise RuntimeError(f"no foreign key from {MESSAGES} to {SESSIONS} found")


def _pg_sequence() -> str:
    if op.get_context().as_sql:
        return f"{MESSAGES}_id_seq"
    name = op.get_bind().execute(sa.text(f"SELECT pg_get_serial_sequence('{MESSAGES}', 'id')"))
    return str(name.scalar_one())


def _partitioned() -> bool:
    if op.get_context().as_sql or op.get_context().dialect.name != "postgresql":
        return False
    found = op.get_bind().execute(
        sa.text(f"SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('{MESSAGES}')")
    )
    return found.first() is not None


def _refuse_sqlite_foreign_keys() -> None:
    if op.get_context().as_sql:
        return
    if op.get_bind().exec_driver_sql("PRAGMA foreign_keys").scalar():
        # Dropping the old sessions table would delete every message (ON
        # DELETE CASCADE) while foreign keys are on.
        raise RuntimeError(
            "this revision rebuilds SQLite tables and needs PRAGMA foreign_keys=OFF, "
            "which cannot change inside a transaction: run it with `lattice db upgrade` "
            "or lattice.migrations.upgrade(), which switch foreign keys off for the run"
        )


def _restore_missing_sessions() -> None:
    """Give every session id found among the messages a sessions row.

    On MySQL the SDK's collation folds case and trailing spaces, so it filed
    ``'bob '`` under the row of ``'bob'``; now that ids are exact, such
    sessions need rows of their own before the foreign key is restored.
    """
    op.execute(
        f"INSERT INTO {SESSIONS} (session_id, created_at, updated_at) "
        f"SELECT m.session_id, MIN(m.created_at), MAX(m.created_at) FROM {MESSAGES} m "
        f"LEFT JOIN {SESSIONS} s ON s.session_id = m.session_id "
        "WHERE s.session_id IS NULL GROUP BY m.session_id"
    )


def _count_items() -> None:
    op.execute(
        f"UPDATE {SESSIONS} SET item_count = (SELECT COUNT(*) FROM {MESSAGES} "
        f"WHERE {MESSAGES}.session_id = {SESSIONS}.session_id)"
    )


def upgrade() -> None:
    dialect_name = op.get_context().dialect.name
    if dialect_name == "sqlite":
        _upgrade_sqlite()
    else:
        _upgrade_server(dialect_name)
        _count_items()


def _upgrade_server(dialect_name: str) -> None:
    is_mysql = _is_mysql(dialect_name)
    if is_mysql:
        # TIMESTAMP -> DATETIME converts through the session's time zone.
        op.execute("SET @lattice_time_zone = @@session.time_zone")
        op.execute("SET time_zone = '+00:00'")
    op.drop_constraint(_sdk_fk_name(dialect_name), MESSAGES, type_="foreignkey")
    op.drop_index(SDK_INDEX, table_name=MESSAGES)
    if is_mysql:
        for table in (SESSIONS, MESSAGES):
            op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    for table, column, old, new in _type_changes(dialect_name):
        op.alter_column(
            table, column, type_=new, existing_type=old,
            **_alter_kwargs(dialect_name, column, upgrade=True),
        )  # fmt: skip
    if dialect_name == "postgresql":
        op.execute(f"ALTER SEQUENCE {_pg_sequence()} AS BIGINT")
    for column in _new_columns():
        op.add_column(SESSIONS, column)
    _restore_missing_sessions()
    op.create_index(INDEX, MESSAGES, ["session_id", "id"])
    op.create_foreign_key(
        FK, MESSAGES, SESSIONS, ["session_id"], ["session_id"], ondelete="CASCADE"
    )
    if is_mysql:
        op.execute("SET time_zone = @lattice_time_zone")


def _upgrade_sqlite() -> None:
    _refuse_sqlite_foreign_keys()
    # Rebuild from the baseline's definition (not by reflection), which names
    # the SDK's unnamed foreign key and works for --sql too.
    sessions, messages = _baseline().sdk_tables("sqlite", fk_name=FK)
    changes = _type_changes("sqlite")
    with op.batch_alter_table(
        MESSAGES,
        copy_from=messages,
        recreate="always",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        for _, column, old, new in (c for c in changes if c[0] == MESSAGES):
            batch.alter_column(column, type_=new, existing_type=old, existing_nullable=False)
        batch.drop_index(SDK_INDEX)
        batch.create_index(INDEX, ["session_id", "id"])
    with op.batch_alter_table(SESSIONS, copy_from=sessions, recreate="always") as batch:
        for _, column, old, new in (c for c in changes if c[0] == SESSIONS):
            batch.alter_column(column, type_=new, existing_type=old, existing_nullable=False)
        for column in _new_columns():
            batch.add_column(column)
    _restore_missing_sessions()
    _count_items()


def downgrade() -> None:
    dialect_name = op.get_context().dialect.name
    changes = _type_changes(dialect_name)
    if dialect_name == "sqlite":
        _refuse_sqlite_foreign_keys()
        with op.batch_alter_table(
            MESSAGES, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch:
            batch.drop_index(INDEX)
            for _, column, old, new in (c for c in changes if c[0] == MESSAGES):
                batch.alter_column(column, type_=old, existing_type=new, existing_nullable=False)
            batch.create_index(SDK_INDEX, ["session_id", "created_at"])
        with op.batch_alter_table(SESSIONS, recreate="always") as batch:
            for column in _new_columns():
                batch.drop_column(column.name)
            for _, column, old, new in (c for c in changes if c[0] == SESSIONS):
                batch.alter_column(column, type_=old, existing_type=new, existing_nullable=False)
        return
    is_mysql = _is_mysql(dialect_name)
    if is_mysql:
        op.execute("SET @lattice_time_zone = @@session.time_zone")
        op.execute("SET time_zone = '+00:00'")
    op.drop_constraint(FK, MESSAGES, type_="foreignkey")
    if _partitioned():
        # Partitioned by `lattice db upgrade --partitions`: the table keeps its
        # layout (primary key (session_id, id), no separate index) and its
        # partition key's type, VARCHAR(255), which the SDK reads as well.
        changes = [c for c in changes if c[:2] != (MESSAGES, "session_id")]
    else:
        op.drop_index(INDEX, table_name=MESSAGES)
    for column in _new_columns():
        op.drop_column(SESSIONS, column.name)
    for table, column, old, new in changes:
        op.alter_column(
            table, column, type_=old, existing_type=new,
            **_alter_kwargs(dialect_name, column, upgrade=False),
        )  # fmt: skip
    if dialect_name == "postgresql":
        op.execute(f"ALTER SEQUENCE {_pg_sequence()} AS INTEGER")
    op.create_index(SDK_INDEX, MESSAGES, ["session_id", "created_at"])
    op.create_foreign_key(
        None, MESSAGES, SESSIONS, ["session_id"], ["session_id"], ondelete="CASCADE"
    )
    if is_mysql:
        op.execute("SET time_zone = @lattice_time_zone")
