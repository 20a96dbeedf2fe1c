"""Lattice's own rules, on top of the session contract: what Lattice's backends promise.

Third-party sessions need not pass these: they check the exact JSON text of
items, which items and ids Lattice refuses, and the messages it gives.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..protocol import SessionSettings
from .conformance import (
    SessionConformance,
    SessionFactory,
    _any_id_works,
    _sid,
    _text,
    hostile_items,
    tricky_items,
)

__all__ = ["LatticeConformance"]


class LatticeConformance(SessionConformance):
    """:class:`SessionConformance` plus Lattice's stricter promises and wording."""

    # Largest item the backend under test accepts; tests go just past it.
    max_item_bytes: int = 16 * 1024 * 1024

    async def test_exact_round_trip(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("round-trip"))
        items = tricky_items()
        await session.add_items(items)
        back = await session.get_items()
        assert _text(back) == _text(items)
        assert json.dumps(back, ensure_ascii=False) == json.dumps(items, ensure_ascii=False)
        for got, sent in zip(back, items, strict=True):
            assert list(got) == list(sent), "key order changed"
        # A fresh object reads the same text.
        assert _text(await session_factory(session.session_id).get_items()) == _text(items)

    async def test_pop_round_trips_exactly(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("pop-exact"))
        items = tricky_items()
        await session.add_items(items)
        popped = [await session.pop_item() for _ in items]
        assert _text(popped[::-1]) == _text(items)

    async def test_settings_objects_are_accepted(self, session_factory: SessionFactory) -> None:
        session = session_factory(
            _sid("settings-object"), session_settings=SessionSettings(limit=1)
        )
        await session.add_items([{"n": 1}, {"n": 2}])
        assert await session.get_items() == [{"n": 2}]

    async def test_negative_limit_returns_nothing(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("negative"))
        await session.add_items([{"n": 1}])
        assert await session.get_items(limit=-1) == []

    # -- bad input (Lattice's list and messages) -----------------------------------

    @pytest.mark.parametrize(
        ("label", "bad", "error"), hostile_items(), ids=[h[0] for h in hostile_items()]
    )
    async def test_bad_item_is_refused_whole(
        self, session_factory: SessionFactory, label: str, bad: Any, error: type[Exception]
    ) -> None:
        session = session_factory(_sid("bad"))
        await session.add_items([{"keep": True}])
        with pytest.raises(error, match=r"item 2\b") as caught:
            await session.add_items([{"ok": 1}, {"ok": 2}, bad, {"ok": 3}])
        assert str(caught.value)
        assert await session.get_items() == [{"keep": True}]

    async def test_oversized_item_is_refused(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("big"))
        big = {"content": "x" * (self.max_item_bytes + 1)}
        with pytest.raises(ValueError, match=r"item 1\b.*bytes"):
            await session.add_items([{"ok": 1}, big])
        assert await session.get_items() == []

    async def test_items_must_be_a_list(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("not-list"))
        with pytest.raises(TypeError):
            await session.add_items({"role": "user"})
        assert await session.get_items() == []

    # -- session ids -----------------------------------------------------------

    @pytest.mark.parametrize(
        "raw_id",
        ["x" * 255, "é" * 255, "🚀" * 255],
        ids=["255", "255x2", "255x4"],
    )
    async def test_longest_session_id_works(
        self, session_factory: SessionFactory, raw_id: str
    ) -> None:
        await _any_id_works(session_factory, raw_id)

    @pytest.mark.parametrize("bad_id", ["", "x" * 256], ids=["empty", "256"])
    async def test_bad_session_id_is_refused(
        self, session_factory: SessionFactory, bad_id: str
    ) -> None:
        with pytest.raises(ValueError, match="session_id"):
            session_factory(bad_id)
