"""Hash partitioning of the messages table on PostgreSQL (``lattice db upgrade --partitions N``).

The layout: ``agent_messages`` is ``PARTITION BY HASH (session_id)`` with
``N`` partitions ``agent_messages_p0`` ... ``agent_messages_p{N-1}``, primary
key ``(session_id, id)``, and ``id`` still drawn from the one ``BIGSERIAL``
sequence of the parent table, shared by every partition, so ``ORDER BY id``
within a session is the order of the writes as before
(:func:`lattice.schema.lattice_tables` with ``partitioned=True``).

How it interacts with the revisions: the revisions create and alter the
unpartitioned table as always; once the database is at the head,
:func:`partition_messages` replaces the (still empty) table by the
partitioned one, in one transaction under the migration lock. Before any
revision runs, :func:`refuse_unless_possible` refuses a messages table that
holds rows (converting billions of rows is a job to plan, not a side effect
of an upgrade; docs/partitioning.md says how) or one already partitioned
into another number of partitions. Nothing is ever silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection

from . import schema
from .errors import LatticeError

__all__ = [
    "MAX_PARTITIONS",
    "PartitioningError",
    "check_backend",
    "check_partitions",
    "partition_count",
    "partition_messages",
    "partition_name",
    "refuse_unless_possible",
]

#: More partitions than this is a configuration mistake, not a plan: each is
#: a table with its own indexes, files and planning cost.
MAX_PARTITIONS = 1024


class PartitioningError(LatticeError):
    """The layout cannot be made here (``lattice._migration_env`` raises a ``MigrationError``)."""


def check_partitions(partitions: object) -> int:
    """``partitions`` as a count, or ``ValueError`` naming what is wrong with it."""
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise ValueError(f"partitions must be an integer, not {partitions!r}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
    return partitions


def check_backend(dialect_name: str) -> None:
    """``ValueError`` unless the database can hash-partition (PostgreSQL)."""
    if dialect_name != "postgresql":
        raise ValueError(
            "partitions are a PostgreSQL feature (declarative hash partitioning), "
            f"and this database is {dialect_name}: upgrade without --partitions"
        )


def partition_name(table: str, remainder: int) -> str:
    """The name of the partition holding hash remainder ``remainder``."""
    return f"{table}_p{remainder}"


def _partitioning(connection: Connection, table: str) -> tuple[str, int] | None:
    """(strategy, number of partitions) of a partitioned ``table``, else ``None``."""
    if connection.dialect.name != "postgresql":
        return None
    row = connection.execute(
        text(
            "SELECT p.partstrat::text, (SELECT count(*) FROM pg_inherits i "
            "WHERE i.inhparent = p.partrelid) FROM pg_partitioned_table p "
            "WHERE p.partrelid = to_regclass(:table)"
        ),
        {"table": table},
    ).first()
    return None if row is None else (str(row[0]), int(row[1]))


def partition_count(connection: Connection, table: str = schema.DEFAULT_MESSAGES_TABLE) -> int:
    """How many partitions ``table`` has; 0 when it is not partitioned (or absent)."""
    found = _partitioning(connection, table)
    return 0 if found is None else found[1]


def _exists(connection: Connection, table: str) -> bool:
    return bool(
        connection.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar()
    )


def _has_rows(connection: Connection, table: str) -> bool:
    return bool(connection.execute(text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar())


def refuse_unless_possible(connection: Connection, partitions: int) -> None:
    """Refuse (``PartitioningError``, with what to do) before any revision runs, or return.

    Possible: no messages table yet, an empty unpartitioned one, or one
    already partitioned into ``partitions``.
    """
    check_backend(connection.dialect.name)
    table = schema.DEFAULT_MESSAGES_TABLE
    if not _exists(connection, table):
        return
    found = _partitioning(connection, table)
    if found is not None and found[0] != "h":
        raise PartitioningError(
            f"{table} is partitioned, but not by hash as --partitions makes it: "
            "run `lattice db upgrade` without --partitions"
        )
    have = 0 if found is None else found[1]
    if have == partitions:
        return
    if have:
        raise PartitioningError(
            f"{table} is already partitioned into {have} partitions, not {partitions}: "
            "changing the count means copying every row into a new table "
            "(docs/partitioning.md); run `lattice db upgrade` without --partitions, "
            f"or with --partitions {have}"
        )
    if _has_rows(connection, table):
        raise PartitioningError(
            f"{table} already holds items and is not partitioned; the upgrade only "
            "partitions an empty table (nothing was changed). Run `lattice db upgrade` "
            "without --partitions, or copy the sessions into a partitioned database "
            "(`lattice sessions copy`, docs/partitioning.md)"
        )


def partition_messages(
    connection: Connection, partitions: int, progress: Callable[[str], None] | None
) -> None:
    """Replace the empty messages table by the partitioned one (at the head revision).

    In the caller's transaction: lock the table, check again that it is
    empty, keep its sequence's position, drop it, create the partitioned
    table (from :data:`lattice.schema.partitioned_metadata`) and its
    partitions, and move the new sequence to where the old one was.
    """
    table = schema.DEFAULT_MESSAGES_TABLE
    if partition_count(connection, table) == partitions:
        if progress is not None:
            progress(f"{table} is partitioned into {partitions} (HASH (session_id))")
        return
    connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
    if _has_rows(connection, table):  # written since refuse_unless_possible looked
        raise PartitioningError(
            f"{table} received items during the upgrade; it was not partitioned"
        )
    sequence = f"pg_get_serial_sequence('{table}', 'id')"
    old = connection.execute(text(f"SELECT {sequence}")).scalar_one()
    last_value, is_called = connection.execute(
        text(f"SELECT last_value, is_called FROM {old}")
    ).one()
    connection.execute(text(f"DROP TABLE {table}"))
    schema.partitioned_metadata.tables[table].create(connection)
    for remainder in range(partitions):
        connection.execute(
            text(
                f"CREATE TABLE {partition_name(table, remainder)} PARTITION OF {table} "
                f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})"
            )
        )
    connection.execute(
        text(f"SELECT setval({sequence}, :value, :called)"),
        {"value": last_value, "called": is_called},
    )
    if progress is not None:
        progress(f"partitioned {table}: HASH (session_id) into {partitions} partitions")
