"""Benchmarks: Lattice next to the Agents SDK's ``SQLAlchemySession`` and the raw drivers.

Run with ``make bench`` or ``python -m benchmarks --help``. See
``docs/performance.md`` for what is measured, how, and the latest numbers.
"""

from __future__ import annotations
