"""The session conformance suite, public so any ``Session`` can prove itself.

Subclass :class:`SessionConformance` in a pytest module (with
``pytest-asyncio`` in ``auto`` mode) and give it a ``session_factory``
fixture: a callable ``(session_id, session_settings=None) -> Session`` whose
sessions of one test share one store, so two objects with the same id see the
same history. Each test uses fresh session ids::

    import pytest
    from lattice import SQLAlchemySession
    from lattice.testing import SessionConformance

    class TestMyBackend(SessionConformance):
        @pytest.fixture
        def session_factory(self, my_engine):
            return lambda sid, session_settings=None: SQLAlchemySession(
                sid, engine=my_engine, session_settings=session_settings
            )
"""

from __future__ import annotations

from .conformance import SessionConformance, SessionFactory, hostile_items, tricky_items

__all__ = ["SessionConformance", "SessionFactory", "hostile_items", "tricky_items"]
