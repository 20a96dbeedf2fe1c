"""``lattice.testing`` judges the contract, not Lattice's wording: other sessions pass.

Two sessions Lattice did not write run the whole :class:`SessionConformance`
suite here: a small dictionary-backed session (what a user might write) and
the Agents SDK's own ``SQLiteSession``. Lattice's backends run
:class:`LatticeConformance` in test_conformance.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from lattice import SessionABC
from lattice.testing import LatticeConformance, SessionConformance, SessionFactory


class DictSession(SessionABC):
    """A correct session with its own conventions: no id rules, its own messages."""

    def __init__(
        self, session_id: str, store: dict[str, list[str]], lock: asyncio.Lock, settings: Any
    ) -> None:
        self.session_id = session_id
        self.session_settings = settings
        self._store = store
        self._lock = lock

    async def get_items(self, limit: int | None = None) -> list[Any]:
        if limit is None and self.session_settings:
            limit = self.session_settings.get("limit")
        rows = self._store.get(self.session_id, [])
        chosen = rows if limit is None else rows[len(rows) - limit :] if limit > 0 else []
        return [json.loads(row) for row in chosen]

    async def add_items(self, items: list[Any]) -> None:
        encoded = [json.dumps(item) for item in items]  # raises before anything is kept
        async with self._lock:
            await asyncio.sleep(0)
            self._store.setdefault(self.session_id, []).extend(encoded)

    async def pop_item(self) -> Any | None:
        async with self._lock:
            rows = self._store.get(self.session_id)
            return json.loads(rows.pop()) if rows else None

    async def clear_session(self) -> None:
        self._store.pop(self.session_id, None)


class TestDictSessionPassesTheContract(SessionConformance):
    @pytest.fixture
    def session_factory(self) -> SessionFactory:
        store: dict[str, list[str]] = {}
        lock = asyncio.Lock()
        return lambda sid, session_settings=None: DictSession(sid, store, lock, session_settings)


class TestAgentsSDKSQLiteSessionPassesTheContract(SessionConformance):
    @pytest.fixture
    def session_factory(self, tmp_path: Path) -> SessionFactory:
        memory = pytest.importorskip("agents.memory")
        path = tmp_path / "sdk.db"

        def make(sid: str, session_settings: Any = None) -> Any:
            return memory.SQLiteSession(sid, path, session_settings=session_settings)

        return make


def test_the_lattice_rules_are_not_the_contract() -> None:
    # What third-party sessions need not pass is only in LatticeConformance.
    contract = {n for n in dir(SessionConformance) if n.startswith("test_")}
    lattice_only = {n for n in dir(LatticeConformance) if n.startswith("test_")} - contract
    assert {
        "test_exact_round_trip",
        "test_bad_item_is_refused_whole",
        "test_bad_session_id_is_refused",
        "test_oversized_item_is_refused",
    } <= lattice_only
