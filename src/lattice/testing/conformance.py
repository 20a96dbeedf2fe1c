"""The session contract, as the Agents SDK's Runner relies on it: any ``Session`` must pass.

:class:`SessionConformance` checks behaviour only, never Lattice's wording
or its own rules: items come back equal and in order, limits return the
latest items, pops hand out the newest item exactly once, a batch is stored
whole or not at all, sessions are isolated, and two objects with one id
share a history. Lattice's stricter promises (exact JSON text, which items
and ids it refuses, its messages) are in
:class:`lattice.testing.LatticeConformance`, which Lattice's own backends pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ..protocol import Session

__all__ = [
    "SessionConformance",
    "SessionFactory",
    "hostile_items",
    "tricky_items",
    "unencodable_items",
]

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
        {"text": 'NUL \x00 inside, tab \t, newline \n, quote ", backslash \\'},
        {"text": "héllo wörld, 日本語, emoji 🧠🚀, rtl עברית"},
        {"escaped_looking": "\\u00e9 is not é", "unicode_key_é": "v"},
        {},
        {"nested": [[[[{"deep": [1, [2, [3]]]}]]]], "empty_list": [], "empty_obj": {}},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}'},
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


async def _any_id_works(session_factory: SessionFactory, raw_id: str) -> None:
    session = session_factory(raw_id)
    await session.clear_session()
    neighbour = session_factory(raw_id[:-1] + ("y" if raw_id[-1] != "y" else "z"))
    await neighbour.clear_session()
    await session.add_items([{"id": raw_id}])
    assert session.session_id == raw_id
    assert await session_factory(raw_id).get_items() == [{"id": raw_id}]
    assert await neighbour.get_items() == []
    assert await session.pop_item() == {"id": raw_id}


def unencodable_items() -> list[tuple[str, Any]]:
    """Items JSON cannot encode at all: every session must refuse them (label, item)."""
    return [
        ("datetime", {"at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)}),
        ("decimal", {"amount": decimal.Decimal("1.10")}),
        ("uuid", {"id": uuid.UUID(int=1)}),
        ("bytes", {"blob": b"\x00\x01"}),
        ("set", {"tags": {"a"}}),
        ("tuple key", {("a", "b"): 1}),
    ]


class SessionConformance:
    """The contract's tests. Subclass it in a test module and provide ``session_factory``.

    ``session_factory(session_id, session_settings=None)`` returns a session;
    sessions of one test share one store. Set ``supports_settings = False``
    for a session that takes no ``session_settings``.
    """

    # The tests are coroutines: run them whatever pytest-asyncio's mode.
    pytestmark = pytest.mark.asyncio

    #: Whether sessions take ``session_settings`` (a default ``limit``).
    supports_settings: bool = True

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

    async def test_round_trip(self, session_factory: SessionFactory) -> None:
        session = session_factory(_sid("round-trip"))
        items = tricky_items()
        await session.add_items(items)
        assert await session.get_items() == items
        # A fresh object with the same id reads the same items.
        assert await session_factory(session.session_id).get_items() == items

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
        assert await session.get_items(limit=None) == [{"n": n} for n in range(10)]

    async def test_settings_limit_is_the_default(self, session_factory: SessionFactory) -> None:
        if not self.supports_settings:
            pytest.skip("this session takes no session_settings (supports_settings = False)")
        sid = _sid("settings")
        session = session_factory(sid, session_settings={"limit": 2})
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
        assert popped[::-1] == items

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

    # -- bad input: refused whole, whatever the message -------------------------------

    @pytest.mark.parametrize(
        ("label", "bad"), unencodable_items(), ids=[u[0] for u in unencodable_items()]
    )
    async def test_unencodable_item_is_refused_whole(
        self, session_factory: SessionFactory, label: str, bad: Any
    ) -> None:
        session = session_factory(_sid("bad"))
        await session.add_items([{"keep": True}])
        with pytest.raises((TypeError, ValueError)):
            await session.add_items([{"ok": 1}, {"ok": 2}, bad, {"ok": 3}])
        assert await session.get_items() == [{"keep": True}]

    # -- session ids: any text, compared exactly -----------------------------------

    @pytest.mark.parametrize(
        "raw_id",
        [
            'it\'s "quoted"',
            "100% %s %(x)s",
            "'; DROP TABLE agent_messages; --",
            "emoji 🧠 id ✨",
            "tab\tand\nnewline",
            "back\\slash",
        ],
        ids=["quotes", "percent", "sql", "emoji", "control", "backslash"],
    )
    async def test_any_session_id_works(self, session_factory: SessionFactory, raw_id: str) -> None:
        await _any_id_works(session_factory, raw_id)

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
