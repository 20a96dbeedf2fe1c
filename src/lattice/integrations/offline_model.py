"""``OfflineMemoryModel``: an Agents SDK model that needs no API key.

``lattice demo`` uses it when no real model is configured. It answers from
the input the Runner gives it, which is the session's stored history plus
the new message, so what it says shows what the session remembered: how
many turns came before, what the user said first and last, their name.
It makes no network call and is deterministic.

Needs the ``agents`` extra (``pip install 'lattice-sessions[agents]'``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

try:
    from agents import Model, ModelResponse, Usage
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "the offline demo model needs the OpenAI Agents SDK; pip install 'lattice-sessions[agents]'"
    ) from exc
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputMessage,
    ResponseOutputText,
)

from .transcript import transcript

__all__ = ["OfflineMemoryModel", "compose_reply"]

_NAME = re.compile(r"\bmy name is ([^\W\d_][\w'-]*)", re.IGNORECASE)
_RECALL = re.compile(r"\b(told|said|say|so far|recap|remember)\b", re.IGNORECASE)


def _quote(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return f"“{text if len(text) <= width else text[: width - 1] + '…'}”"


def compose_reply(turns: Sequence[tuple[str, str]]) -> str:
    """The offline model's answer to a conversation given as ``(role, text)`` pairs.

    The last user message is the new one; the user messages before it are
    what the session remembered. A question about a name gets the name the
    user gave ("my name is ..."); a question about what was said gets the
    list; anything else gets the first and the previous message.
    """
    said = [text for role, text in turns if role == "user"]
    if not said:
        return "I was given no message from you."
    current, earlier = said[-1], said[:-1]
    names = [match.group(1) for text in earlier for match in _NAME.finditer(text)]
    if not earlier:
        own = _NAME.search(current)
        greeting = f", {own.group(1)}" if own else ""
        return (
            f"Hello{greeting}! This is the first turn of our conversation: nothing was stored "
            "before it. Everything we say is saved in the session, so ask me later what you "
            "told me, even from another process."
        )
    count = len(earlier)
    reply = f"{count} turn{'s' if count != 1 else ''} came before this one."
    question = current.rstrip().endswith("?")
    if question and "name" in current.lower():
        if names:
            return f"{reply} Yes: you told me your name is {names[-1]}."
        return f"{reply} You have not told me your name."
    if question and _RECALL.search(current):
        return f"{reply} You told me: " + "; ".join(_quote(text, 60) for text in earlier)
    reply += f" You first said {_quote(earlier[0])}"
    if count > 1:
        reply += f", and just before this {_quote(earlier[-1])}"
    return reply


def _message(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="offline-message",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


class OfflineMemoryModel(Model):
    """A model that replies with what the conversation history shows (see :func:`compose_reply`)."""

    def _answer(self, input: Any) -> ResponseOutputMessage:
        return _message(compose_reply(transcript(input)))

    async def get_response(
        self,
        system_instructions: str | None,
        input: Any,
        model_settings: Any,
        tools: Any,
        output_schema: Any,
        handoffs: Any,
        tracing: Any,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        """Answer in one piece."""
        return ModelResponse(
            output=[self._answer(input)], usage=Usage(requests=1), response_id=None
        )

    async def stream_response(
        self,
        system_instructions: str | None,
        input: Any,
        model_settings: Any,
        tools: Any,
        output_schema: Any,
        handoffs: Any,
        tracing: Any,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> AsyncIterator[Any]:
        """Stream the answer as one completed response."""
        response = Response(
            id="offline-response",
            created_at=0,
            model="offline-memory",
            object="response",
            output=[self._answer(input)],
            tool_choice="none",
            tools=[],
            top_p=None,
            parallel_tool_calls=False,
            status="completed",
        )
        yield ResponseCompletedEvent(
            type="response.completed", response=response, sequence_number=0
        )
