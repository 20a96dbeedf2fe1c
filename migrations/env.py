"""Alembic environment of Lattice's tables.

The work is done in ``lattice._migration_env`` (version table
``lattice_alembic_version``, only Lattice's tables, the migration lock, batch
mode on SQLite, one transaction per revision), so this file stays the same
whether it runs from a checkout or from the installed wheel.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from lattice._migration_env import run_offline, run_online

if context.config.config_file_name is not None:  # run by the `alembic` command
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)
if context.is_offline_mode():
    run_offline(context)
else:
    run_online(context)
