"""The public conformance suites (contract and Lattice rules), run over the four backends."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lattice import AdvancedSQLAlchemySession, SQLAlchemySession
from lattice.schema import LatticeTables
from lattice.testing import LatticeConformance, SessionFactory


class TestSQLAlchemySessionConformance(LatticeConformance):
    @pytest.fixture
    def session_factory(self, engine: AsyncEngine, tables: LatticeTables) -> SessionFactory:
        def make(session_id: str, session_settings: Any = None) -> SQLAlchemySession:
            return SQLAlchemySession(
                session_id,
                engine=engine,
                sessions_table=tables.sessions.name,
                messages_table=tables.messages.name,
                session_settings=session_settings,
            )

        return make


class TestAdvancedSQLAlchemySessionConformance(LatticeConformance):
    """An advanced session is a plain session too: the same suites, on its main branch."""

    @pytest.fixture
    def session_factory(self, engine: AsyncEngine, tables: LatticeTables) -> SessionFactory:
        def make(session_id: str, session_settings: Any = None) -> AdvancedSQLAlchemySession:
            return AdvancedSQLAlchemySession(
                session_id,
                engine=engine,
                sessions_table=tables.sessions.name,
                messages_table=tables.messages.name,
                session_settings=session_settings,
            )

        return make
