"""psycopg 3 (``postgresql+psycopg``): the general SQLAlchemy path.

psycopg binds parameters on the server and can pipeline, but SQLAlchemy's
async adapter already drives it well; a fast path is only worth having where
it measurably pays (docs/performance.md records the measurement), so this
driver runs on :class:`~lattice.drivers.sqlalchemy.SQLAlchemyDriver`.
Reads do not switch to AUTOCOMMIT: psycopg refuses to change it on a
connection its pool handed out inside a transaction ("can't change
'autocommit' now"), which a connection made after a disconnect can be
(tests/test_faults.py); the pool's ROLLBACK ends each read instead.
"""

from __future__ import annotations

from .sqlalchemy import SQLAlchemyDriver

__all__ = ["PSYCOPG"]

PSYCOPG = SQLAlchemyDriver("psycopg", autocommit_reads=False)
