"""Conformance suites, public so any ``Session`` can prove itself (the ``testing`` extra).

``pip install "lattice-sessions[testing]"`` brings pytest and pytest-asyncio.
Subclass :class:`SessionConformance` in a test module and give it a
``session_factory`` fixture: a callable ``(session_id, session_settings=None)
-> Session`` whose sessions of one test share one store, so two objects with
the same id see the same history. Each test uses fresh session ids::

    import pytest
    from lattice.testing import SessionConformance

    class TestMySession(SessionConformance):
        @pytest.fixture
        def session_factory(self):
            store = {}
            return lambda sid, session_settings=None: MySession(sid, store)

:class:`SessionConformance` checks the contract the Agents SDK's Runner
relies on, never Lattice's wording. :class:`LatticeConformance` adds
Lattice's own stricter rules (exact JSON text, its refusals and messages);
Lattice's backends pass both.
"""

from __future__ import annotations

try:
    import pytest  # noqa: F401  (the suites are pytest classes)
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "lattice.testing needs pytest and pytest-asyncio: pip install 'lattice-sessions[testing]'"
    ) from exc

from .conformance import (
    SessionConformance,
    SessionFactory,
    hostile_items,
    tricky_items,
    unencodable_items,
)
from .lattice_rules import LatticeConformance

__all__ = [
    "LatticeConformance",
    "SessionConformance",
    "SessionFactory",
    "hostile_items",
    "tricky_items",
    "unencodable_items",
]
