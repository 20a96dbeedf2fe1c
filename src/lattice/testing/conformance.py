"""Behaviour every Lattice backend (and any other ``Session``) must show."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ..protocol import Session, settings_class

__all__ = ["SessionConformance", "SessionFactory", "hostile_items", "tricky_items"]

# The factory's sessions are used as ``Any``: the suite stores arbitrary JSON
# dicts, which the Agents SDK's ``TResponseInputItem`` (the type the session
# methods declare) does not describe. ``test_is_a_session`` checks the shape.
SessionFactory = Callable[..., Any]


def tricky_items() -> list[dict[str, Any]]:
    """Valid items whose JSON text is easy to change by accident."""
    return [
        {"role": "user", "content": "Hello"},
        {"z": 1, "a": 2, "m": {"y": [3, 2, 1], "b": None}},
        {"int": 1, "float": 1.0, "neg_zero": -0.0, "exp": 1e-7, "huge": 1.7976931348623157e308},
        {"big": 2**64 + 1, "neg": -(2**63), "bool": True, "none": None},
        {"text": "NUL \x00 inside, tab \t, newline \n, quote \", backslash \\"},
        {"text": "héllo wörld, 日本語, emoji 🧠🚀, rtl עברית"},
        {"escaped_looking": "\\u00e9 is not é", "unicode_key_é": "v"},
        {},
        {"nested": [[[[{"deep": [1, [2, [3]]]}]]]], "empty_list": [], "empty_obj": {}},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"x\": 1}"},
    ]


def hostile_items() -> list[tuple[str, Any, type[Exception]]]:
    """Items every backend must refuse: (label, item, expected exception type)."""
    return [
        ("list", ["not", "a", "dict"], TypeError),
        ("string", "hello", TypeError),
        ("none", None, TypeError),
        ("datetime", {"at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)}, TypeError),
        ("decimal", {"amount": decimal.Decimal("1.10")}, TypeError),
        ("uuid", {"id": uuid.UUID(int=1)}, TypeError),
        ("bytes", {"blob": b"\x00\x01"}, TypeError),
        ("set", {"tags": {"a"}}, TypeError),
        ("int key", {1: "one"}, TypeError),
        ("tuple key", {("a", "b"): 1}, TypeError),
        ("nan", {"x": float("nan")}, ValueError),
        ("infinity", {"x": float("inf")}, ValueError),
        ("negative infinity", {"x": [float("-inf")]}, ValueError),
        ("lone surrogate", {"text": "bad \ud800 text"}, ValueError),
    ]


def _sid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def _text(items: list[Any]) -> str:
    return json.dumps(items)


class SessionConformance:
    """The shared behaviour tests. Subclass it and provide ``session_factory``."""

    # Largest item the backend under test accepts; tests go just past it.
    max_item_bytes: int = 16 * 1024 * 1024

    @pytest.fixture
    def session_factory(self) -> SessionFactory:
        raise NotImplementedError("provide a session_factory fixture")

    # -- shape ---------------------------------------------------------------

    async def test_is_a_session(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("shape"))
        assert isinstance(session, Session)
        assert isinstance(session.session_id, str)

    async def test_empty_session(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("empty"))
        assert await session.get_items() == []
        assert await session.get_items(limit=5) == []
        assert await session.pop_item() is None
        await session.clear_session()
        assert await session.get_items() == []

    # -- round trip and order ------------------------------------------------

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

    async def test_batches_keep_order(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("order"))
        for batch in range(5):
            await session.add_items([{"batch": batch, "i": i} for i in range(3)])
        items = await session.get_items()
        assert [(it["batch"], it["i"]) for it in items] == [
            (b, i) for b in range(5) for i in range(3)
        ]

    async def test_add_nothing_does_nothing(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("nothing"))
        await session.add_items([])
        assert await session.get_items() == []
        await session.add_items([{"a": 1}])
        await session.add_items([])
        assert await session.get_items() == [{"a": 1}]

    # -- limits ----------------------------------------------------------------

    async def test_limit_returns_latest_in_order(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("limit"))
        await session.add_items([{"n": n} for n in range(10)])
        assert await session.get_items(limit=3) == [{"n": 7}, {"n": 8}, {"n": 9}]
        assert await session.get_items(limit=1) == [{"n": 9}]
        assert await session.get_items(limit=10) == [{"n": n} for n in range(10)]
        assert await session.get_items(limit=50) == [{"n": n} for n in range(10)]
        assert await session.get_items(limit=0) == []
        assert await session.get_items(limit=-1) == []
        assert await session.get_items(limit=None) == [{"n": n} for n in range(10)]

    async def test_settings_limit_is_the_default(self, session_factory: SessionFactory) -> None:
        sid = _sid("settings")
        session = session_factory(sid, session_settings=settings_class()(limit=2))
        await session.add_items([{"n": n} for n in range(5)])
        assert await session.get_items() == [{"n": 3}, {"n": 4}]
        assert await session.get_items(limit=4) == [{"n": n} for n in range(1, 5)]
        as_dict = session_factory(sid, session_settings={"limit": 1})
        assert await as_dict.get_items() == [{"n": 4}]
        unlimited = session_factory(sid)
        assert len(await unlimited.get_items()) == 5

    # -- pop and clear -------------------------------------------------------

    async def test_pop_returns_newest_first(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("pop"))
        await session.add_items([{"n": 1}, {"n": 2}])
        await session.add_items([{"n": 3}])
        assert await session.pop_item() == {"n": 3}
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
        assert await session.pop_item() == {"n": 2}
        assert await session.pop_item() == {"n": 1}
        assert await session.pop_item() is None
        await session.add_items([{"n": 4}])
        assert await session.get_items() == [{"n": 4}]

    async def test_pop_round_trips_exactly(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("pop-exact"))
        items = tricky_items()
        await session.add_items(items)
        popped = [await session.pop_item() for _ in items]
        assert _text(popped[::-1]) == _text(items)

    async def test_clear_touches_only_its_session(self, session_factory: SessionFactory) -> None:
        mine, other = session_factory(_sid("clear-a")), session_factory(_sid("clear-b"))
        await mine.add_items([{"a": 1}, {"a": 2}])
        await other.add_items([{"b": 1}])
        await mine.clear_session()
        assert await mine.get_items() == []
        assert await mine.pop_item() is None
        assert await other.get_items() == [{"b": 1}]
        await mine.add_items([{"a": 3}])
        assert await mine.get_items() == [{"a": 3}]

    # -- bad input -------------------------------------------------------------

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
        [
            "it's \"quoted\"",
            "100% %s %(x)s",
            "'; DROP TABLE agent_messages; --",
            "emoji 🧠 id ✨",
            "tab\tand\nnewline",
            "back\\slash",
            "x" * 255,
            "é" * 255,
            "🚀" * 255,
        ],
        ids=["quotes", "percent", "sql", "emoji", "control", "backslash", "255", "255x2", "255x4"],
    )
    async def test_any_session_id_works(self, session_factory: SessionFactory, raw_id: str) -> None:
        session = session_factory(raw_id)
        await session.clear_session()
        neighbour = session_factory(raw_id[:-1] + ("y" if raw_id[-1] != "y" else "z"))
        await neighbour.clear_session()
        await session.add_items([{"id": raw_id}])
        assert session.session_id == raw_id
        assert await session_factory(raw_id).get_items() == [{"id": raw_id}]
        assert await neighbour.get_items() == []
        assert await session.pop_item() == {"id": raw_id}

    async def test_ids_compare_byte_for_byte(self, session_factory: SessionFactory) -> None:
        base = _sid("bob")
        variants = [base, base + " ", base.upper(), base + "\t", " " + base]
        for variant in variants:
            await session_factory(variant).add_items([{"who": variant}])
        for variant in variants:
            assert await session_factory(variant).get_items() == [{"who": variant}]
        composed, decomposed = "café-" + base, "cafe\u0301-" + base
        await session_factory(composed).add_items([{"form": "nfc"}])
        assert await session_factory(decomposed).get_items() == []

    @pytest.mark.parametrize("bad_id", ["", "x" * 256], ids=["empty", "256"])
    async def test_bad_session_id_is_refused(
        self, session_factory: SessionFactory, bad_id: str
    ) -> None:
        with pytest.raises(ValueError, match="session_id"):
            session_factory(bad_id)

    # -- several objects, concurrency --------------------------------------------

    async def test_objects_share_the_history(self, session_factory: SessionFactory) -> None:
        sid = _sid("shared")
        first, second = session_factory(sid), session_factory(sid)
        await first.add_items([{"from": "first"}])
        assert await second.get_items() == [{"from": "first"}]
        await second.add_items([{"from": "second"}])
        assert await first.pop_item() == {"from": "second"}
        assert await second.get_items() == [{"from": "first"}]

    async def test_concurrent_writers_keep_batches_whole(
        self, session_factory: SessionFactory
    ) -> None:
        sid, writers, per_batch = _sid("writers"), 20, 5
        sessions = [session_factory(sid) for _ in range(writers)]
        await asyncio.gather(
            *(
                s.add_items([{"w": w, "i": i} for i in range(per_batch)])
                for w, s in enumerate(sessions)
            )
        )
        items = await session_factory(sid).get_items()
        assert len(items) == writers * per_batch
        seen = []
        for start in range(0, len(items), per_batch):
            batch = items[start : start + per_batch]
            assert [it["i"] for it in batch] == list(range(per_batch)), "batch interleaved"
            assert len({it["w"] for it in batch}) == 1, "batch interleaved"
            seen.append(batch[0]["w"])
        assert sorted(seen) == list(range(writers))

    async def test_concurrent_pops_hand_out_each_item_once(
        self, session_factory: SessionFactory
    ) -> None:
        sid, poppers, total = _sid("poppers"), 20, 100
        await session_factory(sid).add_items([{"n": n} for n in range(total)])
        sessions = [session_factory(sid) for _ in range(poppers)]

        async def drain(session: Any) -> list[int]:
            got = []
            while (item := await session.pop_item()) is not None:
                got.append(item["n"])
            return got

        results = await asyncio.gather(*(drain(s) for s in sessions))
        popped = [n for got in results for n in got]
        assert sorted(popped) == list(range(total))
        for got in results:
            assert got == sorted(got, reverse=True), "one caller saw items out of order"
        assert await session_factory(sid).get_items() == []
