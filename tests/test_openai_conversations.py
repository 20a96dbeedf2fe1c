"""OpenAIConversationsSession over real HTTP, against a Conversations server on 127.0.0.1.

The server below implements the endpoints the session calls, with the
paging the real API has (``order``, ``limit`` up to 100, ``after`` cursor,
``has_more``/``last_id``), 20 items per create request, 404 for unknown
conversations, and a switch that makes the next requests fail with HTTP 500.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
from agents import Agent, RunConfig, Runner
from agents.memory import Session as AgentsSession
from agents.testing import ScriptedModel, assistant_message

from lattice import OpenAIConversationsSession, Session
from lattice.integrations.transcript import transcript
from lattice.openai_conversations import (
    ConversationNotFoundError,
    ConversationsAPIError,
)

from .local_http import JSONHandler, serve


class ConversationsState:
    """The server's data and its request log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_next = 0
        self.delete_delay = 0.0
        self.deleting = threading.Event()
        # Item creates: a delay (with an event set when one starts), and how many
        # of them store their items and then drop the connection unanswered.
        self.create_delay = 0.0
        self.creating = threading.Event()
        self.lose_replies = 0
        self.created_bodies: list[list[dict[str, Any]]] = []
        self._next_id = 0

    def new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}_{self._next_id:04d}"

    def stored_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """What the real API does to an input item: an id, and messages in full form."""
        stored = dict(item)
        if "role" in stored and "type" not in stored:
            stored["type"] = "message"
        if stored.get("type") == "message":
            content = stored.get("content")
            if isinstance(content, str):
                kind = "output_text" if stored.get("role") == "assistant" else "input_text"
                stored["content"] = [{"type": kind, "text": content}]
            stored.setdefault("status", "completed")
        stored["id"] = self.new_id("msg" if stored.get("type") == "message" else "item")
        return stored


def conversation_object(conversation_id: str) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation", "created_at": 0, "metadata": {}}


class Handler(JSONHandler):
    state: ConversationsState

    def _not_found(self, conversation_id: str) -> None:
        self.send_json(
            404,
            {
                "error": {
                    "message": f"Conversation with id '{conversation_id}' not found.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        parts = [part for part in url.path.split("/") if part]
        body = self.read_json()
        state = self.state
        with state.lock:
            state.requests.append((method, url.path, query))
            if state.fail_next:
                state.fail_next -= 1
                self.send_json(500, {"error": {"message": "The server had an error."}})
                return
            if parts[:1] != ["v1"] or parts[1:2] != ["conversations"]:
                self.send_json(404, {"error": {"message": f"no route {url.path}"}})
                return
            rest = parts[2:]
            if method == "POST" and not rest:
                conversation_id = state.new_id("conv")
                state.conversations[conversation_id] = [
                    state.stored_item(item) for item in body.get("items") or []
                ]
                self.send_json(200, conversation_object(conversation_id))
                return
            conversation_id = rest[0]
            items = state.conversations.get(conversation_id)
            if items is None:
                self._not_found(conversation_id)
                return
            if method == "DELETE" and len(rest) == 1:
                del state.conversations[conversation_id]
                self.send_json(
                    200, {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
                )
            elif method == "GET" and rest[1:] == ["items"]:
                self._list(items, query)
            elif method == "POST" and rest[1:] == ["items"]:
                new = body.get("items") or []
                if not 1 <= len(new) <= 20:
                    self.send_json(400, {"error": {"message": "items: 1 to 20 items per request"}})
                    return
                state.creating.set()
                time.sleep(state.create_delay)
                state.created_bodies.append(new)
                stored = [state.stored_item(item) for item in new]
                items.extend(stored)
                if state.lose_replies:
                    state.lose_replies -= 1
                    self.close_connection = True  # stored, but the answer is lost
                    return
                self.send_json(200, {"object": "list", "data": stored, "has_more": False})
            elif method == "DELETE" and len(rest) == 3 and rest[1] == "items":
                state.deleting.set()
                time.sleep(state.delete_delay)
                index = next((i for i, item in enumerate(items) if item["id"] == rest[2]), None)
                if index is None:
                    self.send_json(404, {"error": {"message": f"Item '{rest[2]}' not found."}})
                    return
                del items[index]
                self.send_json(200, conversation_object(conversation_id))
            else:
                self.send_json(405, {"error": {"message": f"{method} {url.path}"}})

    def _list(self, items: list[dict[str, Any]], query: dict[str, str]) -> None:
        limit = int(query.get("limit", "20"))
        if not 1 <= limit <= 100:
            self.send_json(400, {"error": {"message": "limit must be 1 to 100"}})
            return
        ordered = list(items) if query.get("order", "desc") == "asc" else items[::-1]
        if "after" in query:
            ids = [item["id"] for item in ordered]
            ordered = ordered[ids.index(query["after"]) + 1 :]
        page = ordered[:limit]
        self.send_json(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(ordered) > limit,
            },
        )

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture
def server() -> Iterator[tuple[str, ConversationsState]]:
    state = ConversationsState()
    with serve(type("BoundHandler", (Handler,), {"state": state})) as base_url:
        yield base_url, state


@pytest.fixture
async def client(server: tuple[str, ConversationsState]) -> AsyncIterator[openai.AsyncOpenAI]:
    made = openai.AsyncOpenAI(base_url=server[0], api_key="test", max_retries=0)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def state(server: tuple[str, ConversationsState]) -> ConversationsState:
    return server[1]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_conversation_is_created_lazily(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    assert session.conversation_id is None
    assert session.session_id == ""
    await session.add_items([])
    assert state.requests == []  # nothing to store, nothing created

    assert await session.get_items() == []
    conversation_id = session.session_id
    assert conversation_id.startswith("conv_")
    assert list(state.conversations) == [conversation_id]
    assert await session.start() == conversation_id  # no second conversation
    assert len(state.conversations) == 1


async def test_round_trip_windows_and_paging(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    await session.add_items([user(f"m{i}") for i in range(130)])
    creates = [r for r in state.requests if r[0] == "POST" and r[1].endswith("/items")]
    assert len(creates) == 7  # 130 items, 20 a request

    state.requests.clear()
    items = await session.get_items()
    assert [item["content"][0]["text"] for item in items] == [f"m{i}" for i in range(130)]
    assert items[0]["role"] == "user" and items[0]["id"].startswith("msg_")
    pages = [query for method, _, query in state.requests if method == "GET"]
    assert [page.get("order") for page in pages] == ["asc", "asc"]
    assert pages[0]["limit"] == "100" and "after" not in pages[0]
    assert pages[1]["after"] == items[99]["id"]

    state.requests.clear()
    latest = await session.get_items(limit=3)
    assert [item["content"][0]["text"] for item in latest] == ["m127", "m128", "m129"]
    assert [query for _, _, query in state.requests] == [{"order": "desc", "limit": "3"}]
    assert await session.get_items(limit=0) == []

    session.session_settings = None
    windowed = OpenAIConversationsSession(session.session_id, client, session_settings={"limit": 2})
    assert [i["content"][0]["text"] for i in await windowed.get_items()] == ["m128", "m129"]
    assert len(await windowed.get_items(limit=5)) == 5  # explicit limit wins


async def test_pop_item_and_clear_session(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    assert await session.pop_item() is None
    await session.add_items([user("hello"), {"role": "assistant", "content": "hi there"}])
    popped = await session.pop_item()
    assert popped is not None and popped["role"] == "assistant"
    assert popped["content"][0] == {"type": "output_text", "text": "hi there"}
    assert [item["role"] for item in await session.get_items()] == ["user"]

    # Another object on the same conversation sees the same history.
    other = OpenAIConversationsSession(session.session_id, client)
    assert [item["role"] for item in await other.get_items()] == ["user"]

    old_id = session.session_id
    await session.clear_session()
    assert session.conversation_id is None
    assert old_id not in state.conversations
    await session.clear_session()  # nothing to delete: no request, no error
    await session.add_items([user("fresh start")])
    assert session.session_id != old_id
    assert [item["content"][0]["text"] for item in await session.get_items()] == ["fresh start"]

    # The other object still points at the deleted conversation.
    with pytest.raises(ConversationNotFoundError, match=old_id):
        await other.get_items()
    await other.clear_session()  # already gone on the server: counts as cleared
    assert other.conversation_id is None


async def test_missing_conversation_is_a_clear_error(client: openai.AsyncOpenAI) -> None:
    session = OpenAIConversationsSession("conv_does_not_exist", client)
    for call in (session.get_items(), session.add_items([user("x")]), session.pop_item()):
        with pytest.raises(ConversationNotFoundError) as caught:
            await call
        assert caught.value.status_code == 404
        assert caught.value.conversation_id == "conv_does_not_exist"
        assert "'conv_does_not_exist' was not found" in str(caught.value)
        assert isinstance(caught.value.__cause__, openai.NotFoundError)


async def test_server_errors_are_clear_and_leave_state_alone(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    state.fail_next = 1
    with pytest.raises(ConversationsAPIError, match=r"HTTP 500 .* create a conversation"):
        await session.get_items()
    assert session.conversation_id is None and state.conversations == {}

    await session.add_items([user("kept")])
    state.fail_next = 1
    with pytest.raises(ConversationsAPIError, match=r"HTTP 500 .* list its items") as caught:
        await session.pop_item()
    assert caught.value.status_code == 500
    assert caught.value.conversation_id == session.session_id
    assert [item["content"][0]["text"] for item in await session.get_items()] == ["kept"]


async def test_unreachable_server(client: openai.AsyncOpenAI) -> None:
    dead = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="test", max_retries=0)
    try:
        session = OpenAIConversationsSession("conv_x", dead)
        with pytest.raises(ConversationsAPIError, match="could not reach") as caught:
            await session.get_items()
        assert caught.value.status_code is None
    finally:
        await dead.close()


async def test_bad_items_are_refused_before_any_request(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    with pytest.raises(TypeError, match="item 1"):
        await session.add_items([user("ok"), "not a dict"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="item 0"):
        await session.add_items([{"role": "user", "content": float("nan")}])
    assert state.requests == []


async def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"openai\.AsyncOpenAI .*conversations"):
        OpenAIConversationsSession(openai_client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conversation_id"):
        OpenAIConversationsSession("")


def test_missing_openai_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"pip install 'lattice-sessions\[openai\]'"):
        OpenAIConversationsSession()


async def test_is_a_session_for_both_protocols(client: openai.AsyncOpenAI) -> None:
    resumed = OpenAIConversationsSession("conv_1", client)
    assert isinstance(resumed, Session) and isinstance(resumed, AgentsSession)
    fresh = OpenAIConversationsSession(openai_client=client)
    assert isinstance(fresh, Session) and isinstance(fresh, AgentsSession)
    await fresh.start()
    assert isinstance(fresh, Session) and isinstance(fresh, AgentsSession)


async def test_runner_turns_and_correction(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    model = ScriptedModel(
        [[assistant_message("San Francisco")], [assistant_message("4")], [assistant_message("5")]]
    )
    agent = Agent(name="Assistant", model=model)
    config = RunConfig(tracing_disabled=True)
    session = OpenAIConversationsSession(openai_client=client)

    await Runner.run(agent, "Golden Gate Bridge city?", session=session, run_config=config)
    await Runner.run(agent, "What's 2 + 2?", session=session, run_config=config)
    assert transcript(model.calls[1].input) == [
        ("user", "Golden Gate Bridge city?"),
        ("assistant", "San Francisco"),
        ("user", "What's 2 + 2?"),
    ]
    stored = state.conversations[session.session_id]
    assert len(stored) == 4
    # Stale provider ids are not sent: the server gave every item its own.
    assert all(item["id"].startswith("msg_") for item in stored)

    assert transcript([await session.pop_item()]) == [("assistant", "4")]  # type: ignore[list-item]
    assert transcript([await session.pop_item()]) == [("user", "What's 2 + 2?")]  # type: ignore[list-item]
    await Runner.run(agent, "What's 2 + 3?", session=session, run_config=config)
    assert transcript(model.calls[2].input) == [
        ("user", "Golden Gate Bridge city?"),
        ("assistant", "San Francisco"),
        ("user", "What's 2 + 3?"),
    ]
    assert transcript(await session.get_items())[-1] == ("assistant", "5")


async def test_cancelled_pop_puts_the_item_back(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    await session.add_items([user("first"), user("second")])
    state.delete_delay = 0.2  # the server is still deleting when the caller gives up
    popping = asyncio.ensure_future(session.pop_item())
    await asyncio.to_thread(state.deleting.wait, 5)
    popping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await popping
    state.delete_delay = 0
    texts = [item["content"][0]["text"] for item in await session.get_items()]
    assert texts == ["first", "second"]  # deleted on the server, then appended again
    popped = await session.pop_item()
    assert popped is not None and popped["content"][0]["text"] == "second"


# -- drop-in with the Agents SDK's class (issue 13 #7) -------------------------------


def texts(stored: list[dict[str, Any]]) -> list[str]:
    return [item["content"][0]["text"] for item in stored]


async def test_a_multi_request_write_does_not_retry(
    server: tuple[str, ConversationsState], state: ConversationsState
) -> None:
    """One lost answer to a 20-item request: an error, not a duplicated chunk."""
    retrying = openai.AsyncOpenAI(base_url=server[0], api_key="test", max_retries=2)
    try:
        session = OpenAIConversationsSession(openai_client=retrying)
        await session.start()
        state.lose_replies = 1  # the first chunk is stored, its answer lost
        with pytest.raises(openai.APIConnectionError) as caught:
            await session.add_items([user(f"m{i}") for i in range(41)])
        assert isinstance(caught.value, ConversationsAPIError)
        # The client's retry would have stored the first chunk twice (61 for 41).
        assert texts(state.conversations[session.session_id]) == [f"m{i}" for i in range(20)]
        assert len(state.created_bodies) == 1
        # A single-request write keeps the client's own retry policy, as in the SDK.
        state.lose_replies = 1
        await session.add_items([user("once")])
        assert len(state.created_bodies) == 3  # the lost one and its retry
    finally:
        await retrying.close()


async def test_a_cancelled_multi_request_write_ends_its_chunk_under_the_lock(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    await session.start()
    state.create_delay = 0.3
    adding = asyncio.ensure_future(session.add_items([user(f"m{i}") for i in range(50)]))
    await asyncio.to_thread(state.creating.wait, 5)  # the first chunk is on the server
    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await adding
    # The chunk in flight ended before the cancellation was raised; none was sent after it.
    assert len(state.created_bodies) == 1
    assert len(state.conversations[session.session_id]) == 20
    assert not session._lock.locked()
    state.create_delay = 0
    await asyncio.sleep(0.4)
    assert len(state.created_bodies) == 1


async def test_errors_are_the_openai_classes_too(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    """Code written for the SDK's class catches the openai errors; so it does here."""
    session = OpenAIConversationsSession("conv_missing", client)
    with pytest.raises(openai.NotFoundError) as caught:
        await session.get_items()
    assert isinstance(caught.value, ConversationNotFoundError)
    assert caught.value.status_code == 404 and caught.value.response.status_code == 404
    assert "'conv_missing' was not found" in str(caught.value)
    fresh = OpenAIConversationsSession(openai_client=client)
    state.fail_next = 1
    with pytest.raises(openai.InternalServerError) as failed:
        await fresh.get_items()
    assert isinstance(failed.value, ConversationsAPIError)
    assert isinstance(failed.value, openai.APIStatusError)


async def test_any_client_of_the_asyncopenai_shape(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    """A wrapper object (as tests and proxies pass) works; so the SDK's mocks do."""

    class Wrapped:
        def __init__(self, inner: openai.AsyncOpenAI) -> None:
            self.conversations = inner.conversations
            self.base_url = inner.base_url

    session = OpenAIConversationsSession(openai_client=Wrapped(client))  # type: ignore[arg-type]
    await session.add_items([user(f"m{i}") for i in range(25)])  # no with_options: used as is
    assert texts(await session.get_items(limit=2)) == ["m23", "m24"]


async def test_the_runner_sees_an_sdk_conversations_session(
    client: openai.AsyncOpenAI, state: ConversationsState
) -> None:
    """isinstance holds, so the Runner's Conversations handling applies.

    With ``reasoning_item_id_policy="omit"`` the Runner strips reasoning ids,
    except for a Conversations session, whose server needs them: a reasoning
    item without id (and without encrypted content) cannot be stored there.
    """
    import agents
    from openai.types.responses import ResponseReasoningItem

    session = OpenAIConversationsSession(openai_client=client)
    assert isinstance(session, agents.OpenAIConversationsSession)
    reasoning = ResponseReasoningItem(id="rs_1", type="reasoning", summary=[])
    model = ScriptedModel([[reasoning, assistant_message("hi")]])
    config = RunConfig(tracing_disabled=True, reasoning_item_id_policy="omit")
    await Runner.run(Agent(name="a", model=model), "hello", session=session, run_config=config)
    sent = [item for body in state.created_bodies for item in body]
    assert [item.get("type", "message") for item in sent] == ["message", "reasoning", "message"]
    assert sent[1]["id"] == "rs_1"
    # And, like the SDK's class, it cannot be wrapped for Responses compaction.
    with pytest.raises(ValueError, match="OpenAIConversationsSession"):
        agents.OpenAIResponsesCompactionSession("c", session)
