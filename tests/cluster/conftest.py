"""Fixtures of tests/cluster (the Galera ones live in galera_fixtures.py)."""

from __future__ import annotations

from .galera_fixtures import (  # noqa: F401 - fixtures for test_galera.py
    driver,
    galera,
    galera_cluster,
    galera_tables,
    node_engines,
)
