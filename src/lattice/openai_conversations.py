"""``OpenAIConversationsSession``: history kept by the OpenAI Conversations API.

The server stores the items; this class turns the :class:`~lattice.Session`
calls into the five Conversations endpoints it needs::

    POST   /conversations                          create (lazily, on first use)
    GET    /conversations/{id}/items               list (order, limit, after)
    POST   /conversations/{id}/items               append (at most 20 items a request)
    DELETE /conversations/{id}/items/{item_id}     pop
    DELETE /conversations/{id}                     clear

It needs the ``openai`` package (``pip install 'lattice-sessions[openai]'``),
imported when the first session is made, so ``import lattice`` works without it.

With the Agents SDK installed, the class is registered as a virtual subclass of
``agents.OpenAIConversationsSession``: the SDK's Runner keys its Conversations
handling on that ``isinstance`` (which ids to keep, which reasoning items cannot
be stored, the reasoning-id policy, recovery of a partly sent batch), and
``OpenAIResponsesCompactionSession`` refuses to wrap it, as it refuses the SDK's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from .errors import LatticeError
from .items import encode_items
from .protocol import DefaultSettings, InputItem, InputItems, SessionABC
from .writes import outlast_cancellation

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from .protocol import SessionSettings

__all__ = [
    "ConversationNotFoundError",
    "ConversationsAPIError",
    "OpenAIConversationsSession",
]

_T = TypeVar("_T")

#: The items-create endpoint takes at most 20 items per request.
MAX_ITEMS_PER_REQUEST = 20
#: The list endpoint returns at most 100 items per page (its default is 20).
MAX_PAGE_SIZE = 100
# How often pop_item re-reads the tail when the item it chose was deleted by
# someone else between the read and the delete.
_POP_ATTEMPTS = 5

# Item types whose server-assigned ``id`` the create endpoint requires: the
# hosted tools' calls, and reasoning items (which are replayed by id). Every
# other item gets a fresh id from the server, so a stale one is dropped.
_TYPES_KEEPING_ID = frozenset(
    {
        "reasoning",
        "file_search_call",
        "web_search_call",
        "computer_call",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_call",
        "item_reference",
        "program",
        "program_output",
    }
)
# The Agents SDK's placeholder id for providers that assign none.
_PLACEHOLDER_ID = "__fake_id__"


class ConversationsAPIError(LatticeError):
    """The Conversations API refused a request or could not be reached.

    What is raised is also an instance of the ``openai`` exception it stands
    for (``openai.NotFoundError``, ``openai.APIStatusError``,
    ``openai.APIConnectionError``, ...), with that exception's attributes
    (``response``, ``body``, ...), so code written for the Agents SDK's class,
    which lets the client's errors through, catches it unchanged.

    Attributes:
        conversation_id: The conversation the request was about, if any.
        status_code: The HTTP status, or ``None`` when there was no answer.
    """

    def __init__(
        self, message: str, *, conversation_id: str | None, status_code: int | None
    ) -> None:
        super().__init__(message)
        self.conversation_id = conversation_id
        self.status_code = status_code


class ConversationNotFoundError(ConversationsAPIError):
    """The conversation does not exist: deleted, mistyped, or owned by another project."""


# (our class, the openai class) -> the class raised, deriving from both.
_BOTH: dict[tuple[type[Exception], type[Exception]], type[Exception]] = {}


def _raise_both(
    kind: type[ConversationsAPIError],
    cause: Exception,
    message: str,
    *,
    conversation_id: str | None,
    status_code: int | None,
) -> NoReturn:
    """Raise ``kind`` as a subclass of ``type(cause)`` too, carrying the cause's attributes."""
    key = (kind, type(cause))
    both = _BOTH.get(key)
    if both is None:
        both = type(kind.__name__, (kind, type(cause)), {"__module__": __name__})
        _BOTH[key] = both
    error = cast(ConversationsAPIError, both.__new__(both))
    error.__dict__.update(cause.__dict__)  # response, body, request, code, ...
    Exception.__init__(error, message)
    error.conversation_id = conversation_id
    error.status_code = status_code
    raise error from cause


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ImportError(
            "OpenAIConversationsSession needs the openai package; "
            "pip install 'lattice-sessions[openai]'"
        ) from exc
    return openai


def _for_conversation(item: dict[str, Any]) -> dict[str, Any]:
    """The item as the create endpoint accepts it: no SDK bookkeeping, no stale ids."""
    clean = {key: value for key, value in item.items() if key != "provider_data"}
    item_id = clean.get("id")
    if item_id is not None and (
        item_id == _PLACEHOLDER_ID or clean.get("type") not in _TYPES_KEEPING_ID
    ):
        del clean["id"]
    return clean


class OpenAIConversationsSession(DefaultSettings, SessionABC):
    """A session whose items live in an OpenAI conversation.

    Args:
        conversation_id: Resume this conversation. ``None`` (the default)
            creates a new one on the first call that needs it.
        openai_client: The ``openai.AsyncOpenAI`` client to use, or any object
            of its shape (a ``conversations`` resource; tests pass mocks).
            ``None`` makes one from the environment (``OPENAI_API_KEY``,
            ``OPENAI_BASE_URL``).
        session_settings: Default read settings (``SessionSettings``, the Agents
            SDK's class, or a dict).

    Calls on one object are serialised. Unlike the SQL sessions, an
    ``add_items`` of more than 20 items takes several requests and is not
    atomic: a failure part-way leaves the earlier chunks stored. Such a write
    runs with the client's automatic retries off (a retried request whose
    first answer was lost would store its chunk twice), and a cancelled one
    holds the session's lock until the request in flight has ended, sending no
    further chunk. Errors from the API are raised as
    :class:`ConversationsAPIError` (or its subclass
    :class:`ConversationNotFoundError`), which are also the ``openai``
    exception they stand for, chained to it.

    Raises:
        ImportError: the ``openai`` package is not installed.
    """

    # Read by the Agents SDK's Runner: the server gives stored items new ids,
    # so when it compares stored and sent items it must ignore them.
    _ignore_ids_for_matching = True

    def __init__(
        self,
        conversation_id: str | None = None,
        openai_client: AsyncOpenAI | None = None,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        openai = _import_openai()
        if conversation_id is not None and (
            not isinstance(conversation_id, str) or not conversation_id
        ):
            raise ValueError("conversation_id must be a non-empty str or None")
        if openai_client is None:
            openai_client = openai.AsyncOpenAI()
        elif getattr(openai_client, "conversations", None) is None:
            raise TypeError(
                "openai_client must be an openai.AsyncOpenAI (or an object of its shape, "
                f"with a .conversations resource), not {type(openai_client).__name__}"
            )
        self._openai = openai
        self._client: AsyncOpenAI = openai_client
        self._conversation_id = conversation_id
        self._set_settings(session_settings)
        self._lock = asyncio.Lock()

    # -- the conversation id ---------------------------------------------------

    @property
    def conversation_id(self) -> str | None:
        """The conversation's id, or ``None`` until it has been created."""
        return self._conversation_id

    @property
    def session_id(self) -> str:
        """The conversation's id; ``""`` until the conversation has been created.

        It is always a ``str`` (never raises), so the object satisfies the
        ``Session`` protocol, ``isinstance`` included, from the start.
        ``await start()`` (or any read or non-empty write) creates the conversation.
        """
        return self._conversation_id or ""

    @session_id.setter
    def session_id(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("session_id must be a non-empty str")
        self._conversation_id = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conversation_id={self._conversation_id!r})"

    async def start(self) -> str:
        """Create the conversation now if there is none yet, and return its id."""
        async with self._lock:
            return await self._ensure_conversation()

    # -- plumbing ----------------------------------------------------------------

    async def _api(self, action: str, conversation_id: str | None, call: Awaitable[_T]) -> _T:
        """Await one API call, turning the client's errors into ours."""
        openai = self._openai
        try:
            return await call
        except openai.NotFoundError as exc:
            _raise_both(
                ConversationNotFoundError,
                exc,
                f"conversation {conversation_id!r} was not found while trying to {action} "
                "(deleted, mistyped, or made with another project's API key)",
                conversation_id=conversation_id,
                status_code=exc.status_code,
            )
        except openai.APIStatusError as exc:
            _raise_both(
                ConversationsAPIError,
                exc,
                f"the Conversations API answered HTTP {exc.status_code} when asked to {action} "
                f"(conversation {conversation_id!r}): {exc.message}",
                conversation_id=conversation_id,
                status_code=exc.status_code,
            )
        except openai.APIConnectionError as exc:
            _raise_both(
                ConversationsAPIError,
                exc,
                f"could not reach the Conversations API at "
                f"{getattr(self._client, 'base_url', '?')} to {action} "
                f"(conversation {conversation_id!r}): {exc}",
                conversation_id=conversation_id,
                status_code=None,
            )

    async def _ensure_conversation(self) -> str:
        if self._conversation_id is None:
            created = await self._api(
                "create a conversation", None, self._client.conversations.create(items=[])
            )
            self._conversation_id = str(created.id)
        return self._conversation_id

    async def _list(self, conversation_id: str, limit: int | None) -> list[dict[str, Any]]:
        """The latest ``limit`` items (all when ``None``), oldest first."""

        async def collect() -> list[dict[str, Any]]:
            # The whole history reads oldest first; a window reads newest first
            # and stops as soon as it has enough, so its cost follows ``limit``.
            page_size = MAX_PAGE_SIZE if limit is None else min(limit, MAX_PAGE_SIZE)
            pages = self._client.conversations.items.list(
                conversation_id, order="asc" if limit is None else "desc", limit=page_size
            )
            found: list[dict[str, Any]] = []
            async for item in pages:
                found.append(item.model_dump(mode="json", exclude_unset=True))
                if limit is not None and len(found) >= limit:
                    break
            if limit is not None:
                found.reverse()
            return found

        return await self._api("list its items", conversation_id, collect())

    # -- the Session protocol ------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[InputItem]:
        """Return the latest ``limit`` items, oldest first (all when ``None``).

        ``limit=None`` falls back to ``session_settings.limit``; a limit of 0
        or less returns ``[]`` without a request.
        """
        limit = self._limit(limit)
        if limit is not None and limit <= 0:
            return []
        async with self._lock:
            conversation_id = await self._ensure_conversation()
            return cast("list[InputItem]", await self._list(conversation_id, limit))

    async def add_items(self, items: InputItems) -> None:
        """Append ``items``, in requests of at most 20 items.

        Every item is checked before the first request, with the same rules
        and errors as the SQL sessions; an empty list sends nothing. A write
        of several requests runs without the client's automatic retries, and
        if cancelled, ends the request in flight (holding the lock) and sends
        no more; the cancellation is then raised.
        """
        encode_items(items)
        if not items:
            return
        # Plain dicts go to the client as they are (its parameter type is a
        # union of TypedDicts, hence the casts below).
        batch = [_for_conversation(cast("dict[str, Any]", item)) for item in items]
        several = len(batch) > MAX_ITEMS_PER_REQUEST
        client: Any = self._client
        if several and callable(getattr(client, "with_options", None)):
            # A lost answer to a retried request would store its chunk twice.
            client = client.with_options(max_retries=0)
        async with self._lock:
            conversation_id = await self._ensure_conversation()
            for start in range(0, len(batch), MAX_ITEMS_PER_REQUEST):
                chunk = batch[start : start + MAX_ITEMS_PER_REQUEST]
                request = asyncio.ensure_future(
                    self._api(
                        "add items",
                        conversation_id,
                        client.conversations.items.create(conversation_id, items=chunk),
                    )
                )
                if not several:
                    await request
                    continue
                try:
                    await asyncio.shield(request)
                except asyncio.CancelledError:
                    # Keep the lock until this chunk's request has ended, so no
                    # other call on this object overlaps it; send no more.
                    await outlast_cancellation(request)
                    if not request.cancelled():
                        request.exception()  # retrieved: the cancellation wins
                    raise

    async def pop_item(self) -> InputItem | None:
        """Remove and return the newest item, or ``None`` when there is none.

        If the caller is cancelled while the delete is in flight, the delete is
        seen through and a deleted item is appended again, so it is not lost.
        """
        async with self._lock:
            conversation_id = await self._ensure_conversation()
            for _ in range(_POP_ATTEMPTS):
                latest = await self._list(conversation_id, 1)
                if not latest:
                    return None
                item = latest[0]
                if await self._delete_item(conversation_id, item):
                    return cast("InputItem", item)
            raise ConversationsAPIError(
                f"could not pop from conversation {conversation_id!r}: its newest item was "
                f"deleted by someone else {_POP_ATTEMPTS} times in a row",
                conversation_id=conversation_id,
                status_code=404,
            )

    async def _delete_item(self, conversation_id: str, item: dict[str, Any]) -> bool:
        """Delete ``item``; False when another caller deleted it first."""
        delete = asyncio.ensure_future(
            self._client.conversations.items.delete(
                str(item["id"]), conversation_id=conversation_id
            )
        )
        try:
            await self._api("delete its newest item", conversation_id, asyncio.shield(delete))
        except asyncio.CancelledError:
            await outlast_cancellation(delete)
            if not delete.cancelled() and delete.exception() is None:
                put_back = asyncio.ensure_future(
                    self._client.conversations.items.create(
                        conversation_id,
                        items=cast(Any, [_for_conversation(item)]),
                    )
                )
                await outlast_cancellation(put_back)
            raise
        except ConversationNotFoundError:
            # The item is gone; whether the conversation is too, the next
            # read of the tail tells (and raises if it is).
            return False
        return True

    async def clear_session(self) -> None:
        """Delete the conversation; the next call starts a new one.

        A session that never created its conversation has nothing to delete,
        and a conversation already deleted on the server counts as cleared.
        """
        async with self._lock:
            conversation_id = self._conversation_id
            if conversation_id is None:
                return
            delete = asyncio.ensure_future(self._client.conversations.delete(conversation_id))
            try:
                await self._api("delete it", conversation_id, asyncio.shield(delete))
            except ConversationNotFoundError:
                pass
            except asyncio.CancelledError:
                await outlast_cancellation(delete)
                if not delete.cancelled() and delete.exception() is None:
                    self._conversation_id = None
                raise
            self._conversation_id = None


def _register_with_the_sdk() -> None:
    """Make ``isinstance(session, agents.OpenAIConversationsSession)`` true (see the module doc)."""
    try:
        from agents.memory import OpenAIConversationsSession as SDKConversationsSession
    except ImportError:
        return
    SDKConversationsSession.register(OpenAIConversationsSession)


_register_with_the_sdk()
