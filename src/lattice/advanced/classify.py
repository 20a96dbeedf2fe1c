"""What an item is, for the structure table: its type, whether it opens a turn, its tool.

The same classification as the Agents SDK's ``AdvancedSQLiteSession``, so
turns, tool usage and search give the same answers on the same history.
"""

from __future__ import annotations

import re
from typing import Any

from ..schema_advanced import MESSAGE_TYPE_LENGTH, TOOL_NAME_LENGTH

__all__ = [
    "TOOL_CALL_TYPES",
    "content_matches",
    "is_user_message",
    "message_type",
    "tool_name",
    "tool_usage",
]

#: Item types that count as one use of a tool.
TOOL_CALL_TYPES = frozenset(
    {
        "tool_call",
        "function_call",
        "computer_call",
        "file_search_call",
        "web_search_call",
        "code_interpreter_call",
        "tool_search_call",
        "custom_tool_call",
        "mcp_call",
        "mcp_approval_request",
        "shell_call",
        "apply_patch_call",
    }
)
# Built-in tools whose items carry no name: the type names the tool.
_NAMED_BY_TYPE = frozenset(
    {
        "computer_call",
        "file_search_call",
        "web_search_call",
        "code_interpreter_call",
        "shell_call",
        "apply_patch_call",
    }
)
_TOOL_SEARCH = frozenset({"tool_search_call", "tool_search_output"})


def is_user_message(item: Any) -> bool:
    """A user message: it opens a new turn."""
    return isinstance(item, dict) and item.get("role") == "user"


def message_type(item: Any) -> str:
    """``user``, ``assistant``, the item's ``type``, or ``other`` (cut to the column's length)."""
    if isinstance(item, dict):
        role = item.get("role")
        if role in ("user", "assistant"):
            return str(role)
        kind = item.get("type")
        if kind:
            return str(kind)[:MESSAGE_TYPE_LENGTH]
    return "other"


def _name(item: dict[str, Any]) -> str | None:
    kind = item.get("type")
    if kind in ("mcp_call", "mcp_approval_request") and "server_label" in item:
        label, name = item.get("server_label"), item.get("name")
        if name and label:
            return f"{label}.{name}"
        return str(label or name) if (label or name) else None
    if kind in _TOOL_SEARCH:
        return "tool_search"
    if kind in _NAMED_BY_TYPE:
        return str(kind)
    if "name" in item:
        name, namespace = item.get("name"), item.get("namespace")
        if name is None:
            return None
        text = str(name)
        # A namespace equal to the name is the SDK's deferred top-level shape: the name alone.
        if namespace is not None and str(namespace) and str(namespace) != text and text:
            return f"{namespace}.{text}"
        return text
    return None


def tool_name(item: Any) -> str | None:
    """The tool an item calls or answers for, or ``None`` (cut to the column's length)."""
    if not isinstance(item, dict):
        return None
    name = _name(item)
    return None if name is None else name[:TOOL_NAME_LENGTH]


def tool_usage(rows: list[tuple[int, str, str | None]]) -> list[tuple[str, int, int]]:
    """``(tool_name, uses, turn)`` per tool and turn, by turn, from ``(turn, type, tool)`` rows.

    A tool-search output counts as a use only when its turn holds no
    tool-search call (a server-side search records just the output).
    """
    counts: dict[tuple[str, int], int] = {}
    searched = {(turn, tool) for turn, kind, tool in rows if kind == "tool_search_call"}
    for turn, kind, tool in rows:
        name = tool
        if kind in TOOL_CALL_TYPES:
            if name is None and kind in ("shell_call", "apply_patch_call"):
                name = kind
        elif not (kind == "tool_search_output" and (turn, tool) not in searched):
            continue
        if name is None:
            continue
        counts[(name, turn)] = counts.get((name, turn), 0) + 1
    ordered = sorted(counts.items(), key=lambda entry: entry[0][1])
    return [(name, uses, turn) for (name, turn), uses in ordered]


def content_matches(content: Any, term: str) -> bool:
    """Whether a user message's content holds ``term``, ignoring ASCII case (SQLite's LIKE).

    ``content`` is a string or a list of parts, whose ``text`` fields are searched.
    """
    pattern = re.compile(re.escape(term), re.IGNORECASE | re.ASCII)
    if isinstance(content, str):
        return bool(pattern.search(content))
    if isinstance(content, list):
        return any(
            isinstance(part, dict)
            and isinstance(part.get("text"), str)
            and bool(pattern.search(part["text"]))
            for part in content
        )
    return False
