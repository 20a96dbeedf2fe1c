"""Read session items as (role, text) pairs, for people and for the offline model.

Items come in several shapes: the short ``{"role", "content": str}`` input
message, the full message with a list of content parts, function calls and
their outputs, and server-side tool items. These helpers give each a role
and a line of text, whatever the shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["item_role", "item_text", "transcript"]


def item_role(item: Mapping[str, Any]) -> str:
    """Who produced the item: ``user``, ``assistant``, ``tool call``, ``tool output``, ...

    A message has its own role; another item is named after its ``type``
    (``function_call`` becomes ``tool call``, any ``*_output`` ``tool output``).
    """
    role = item.get("role")
    if isinstance(role, str):
        return role
    kind = str(item.get("type") or "item")
    if kind.endswith("_output"):
        return "tool output"
    if kind.endswith("_call"):
        return "tool call"
    return kind


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text") if "text" in part else part.get("refusal")
                parts.append(str(text) if text is not None else f"[{part.get('type', 'part')}]")
            else:
                parts.append(str(part))
        return "".join(parts)
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def item_text(item: Mapping[str, Any]) -> str:
    """The item's text: a message's words, a call as ``name(arguments)``, a tool's output."""
    if "content" in item:
        return _content_text(item["content"])
    if "name" in item and "arguments" in item:
        return f"{item['name']}({item['arguments']})"
    if "output" in item:
        output = item["output"]
        return output if isinstance(output, str) else _content_text(output)
    return str(item.get("type") or "")


def transcript(items: Iterable[Mapping[str, Any]] | str) -> list[tuple[str, str]]:
    """``(role, text)`` for each item; a plain string input is one user message."""
    if isinstance(items, str):
        return [("user", items)]
    return [(item_role(item), item_text(item)) for item in items]
