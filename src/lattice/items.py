"""Item validation, the JSON codec every backend shares, and the session-id rules.

An item is stored as the exact JSON text that ``json.dumps`` makes of it,
in UTF-8 without ``\\uXXXX`` escapes for non-ASCII text. Reading it back with
``json.loads`` gives a dict that re-encodes to the same text: key order,
``1`` versus ``1.0`` and big integers all survive.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEFAULT_MAX_ITEM_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_SESSION_ID_LENGTH",
    "check_session_id",
    "check_stored_text",
    "decode_item",
    "encode_item",
    "encode_items",
    "loads",
]

#: Longest session id, in characters (the schema stores up to 4 bytes each).
MAX_SESSION_ID_LENGTH = 255

#: Default limit on one item's encoded size: 16 MiB of UTF-8 JSON.
DEFAULT_MAX_ITEM_BYTES = 16 * 1024 * 1024

#: Deepest accepted nesting of dicts and lists in one item. Without a fixed
#: limit, json's own limit is whatever stack the caller has left: an item of
#: 980 levels written from a shallow stack could not be read back by a caller
#: 50 frames deeper (RecursionError on every get_items; tests/test_hostile.py).
#: 256 levels leaves readers about 700 frames of room.
MAX_NESTING_DEPTH = 256

# One encoder for the hot path. ``allow_nan=False`` rejects NaN and the
# infinities, which are not JSON; ``check_circular`` turns self-reference into
# a ValueError instead of a RecursionError.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: "a dict", "an int"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _why_not_json(value: Any, depth: int = 0) -> str:
    """Find a human reason why ``value`` cannot be encoded (slow path, errors only)."""
    if depth > 200:
        return "it is nested too deeply"
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                return f"key {key!r} is {_a(type(key).__name__)}, but JSON keys must be strings"
            reason = _why_not_json(child, depth + 1)
            if reason:
                return f"at key {key!r}: {reason}"
        return ""
    if isinstance(value, (list, tuple)):
        for index, child in enumerate(value):
            reason = _why_not_json(child, depth + 1)
            if reason:
                return f"at position {index}: {reason}"
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not valid JSON"
    if value is None or isinstance(value, (str, int, float, bool)):
        return ""
    return f"{_a(type(value).__name__)} is not JSON-serialisable"


def _non_string_key(item: dict[str, Any]) -> Any:
    """Return the first dict key that is not a ``str`` (``json`` would quietly convert it)."""
    stack: list[Any] = [item]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    return key
                if isinstance(child, (dict, list, tuple)):
                    stack.append(child)
        else:
            stack.extend(child for child in value if isinstance(child, (dict, list, tuple)))
    return _NO_KEY


_NO_KEY = object()


def _too_deep(item: dict[str, Any], text: str) -> bool:
    """True if ``item`` nests dicts and lists more than ``MAX_NESTING_DEPTH`` levels."""
    # Cheap filter first: the depth is at most the number of opening brackets.
    if text.count("{") + text.count("[") <= MAX_NESTING_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(item, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return False


def encode_item(item: Any, index: int = 0, max_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> str:
    """Encode one item to its stored JSON text, or raise naming ``index`` and the reason.

    Raises:
        TypeError: ``item`` is not a dict, or holds a value JSON cannot represent
            (datetime, Decimal, UUID, bytes, a non-string key, ...).
        ValueError: NaN or an infinity, text that is not valid Unicode (lone
            surrogates), nesting too deep, or more than ``max_bytes`` of UTF-8.
    """
    if not isinstance(item, dict):
        raise TypeError(f"item {index} is {_a(type(item).__name__)}, but items must be dicts")
    try:
        text = _ENCODER.encode(item)
    except TypeError as exc:
        reason = _why_not_json(item) or str(exc)
        raise TypeError(f"item {index} cannot be stored as JSON: {reason}") from exc
    except ValueError as exc:
        reason = _why_not_json(item) or str(exc)
        raise ValueError(f"item {index} cannot be stored as JSON: {reason}") from exc
    except RecursionError as exc:
        raise ValueError(f"item {index} cannot be stored as JSON: it is nested too deeply") from exc
    # json.dumps turns int, float, bool and None keys into strings; that
    # would not round-trip, so refuse them (the encoder already refused the rest).
    bad_key = _non_string_key(item)
    if bad_key is not _NO_KEY:
        raise TypeError(
            f"item {index} cannot be stored as JSON: key {bad_key!r} is "
            f"{_a(type(bad_key).__name__)}, but JSON keys must be strings"
        )
    if _too_deep(item, text):
        raise ValueError(
            f"item {index} cannot be stored as JSON: it is nested more than "
            f"{MAX_NESTING_DEPTH} levels deep"
        )
    # ASCII text is its own UTF-8 encoding, so the common case costs one scan.
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"item {index} holds text that is not valid Unicode "
                f"(a lone surrogate at character {exc.start}); it cannot be stored as UTF-8"
            ) from exc
    if size > max_bytes:
        raise ValueError(
            f"item {index} is {size} bytes of JSON, over the limit of {max_bytes} bytes "
            "(max_item_bytes)"
        )
    return text


def encode_items(items: Iterable[Any], max_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> list[str]:
    """Encode a batch; the first bad item raises before anything is returned."""
    if isinstance(items, (dict, str, bytes)):
        raise TypeError(f"items must be a list of dicts, not {_a(type(items).__name__)}")
    return [encode_item(item, index, max_bytes) for index, item in enumerate(items)]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _text_too_deep(text: str) -> bool:
    """True if the JSON ``text`` nests arrays and objects more than ``MAX_NESTING_DEPTH`` deep.

    Read from the text, not from a decoded value: decoding 100,000 levels is a
    RecursionError before any check could run.
    """
    if text.count("{") + text.count("[") <= MAX_NESTING_DEPTH:
        return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                return True
        else:
            depth -= 1
    return False


def check_stored_text(text: str, max_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> dict[str, Any]:
    """Check JSON text from outside (an import) by the rules ``encode_item`` applies; decode it.

    Raises:
        ValueError: not JSON, not an object, invalid Unicode, nested more than
            ``MAX_NESTING_DEPTH`` levels, or over ``max_bytes`` bytes of UTF-8.
    """
    try:
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("the item's JSON text is not valid Unicode") from None
    if size > max_bytes:
        raise ValueError(f"an item of {size} bytes, over the limit of {max_bytes} (max_item_bytes)")
    if _text_too_deep(text):
        raise ValueError(f"the item is nested more than {MAX_NESTING_DEPTH} levels deep")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the item's JSON text is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError("the item's JSON text is not a JSON object")
    return value


def decode_item(text: str) -> dict[str, Any]:
    """Decode stored JSON text back into an item."""
    value: dict[str, Any] = loads(text)
    return value


def loads(text: Any) -> Any:
    """``json.loads(text)``, faster on the text Lattice stores (no surrounding whitespace).

    ``JSONDecoder.raw_decode`` skips ``json.loads``' two whitespace scans,
    about half its time on a 100-character item. Anything it does not read
    whole (surrounding whitespace, bytes, invalid JSON) goes through
    ``json.loads``, so the result, and the error, are the same.
    """
    try:
        value, end = _DECODER.raw_decode(text)
    except (TypeError, ValueError):
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


def check_session_id(session_id: Any, what: str = "session_id") -> str:
    """Return ``session_id`` if it is a valid id, else raise naming the problem.

    A valid id is a ``str`` of 1 to 255 characters that can be encoded as
    UTF-8 and holds no NUL character (PostgreSQL cannot store one). ``what``
    names the value in messages (an owner follows the same rules).
    """
    if not isinstance(session_id, str):
        raise TypeError(f"{what} must be a str, not {type(session_id).__name__}")
    if not 1 <= len(session_id) <= MAX_SESSION_ID_LENGTH:
        raise ValueError(
            f"{what} must be 1 to {MAX_SESSION_ID_LENGTH} characters long, not {len(session_id)}"
        )
    if "\x00" in session_id:
        raise ValueError(f"{what} must not contain a NUL character")
    if not session_id.isascii():
        try:
            session_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} is not valid Unicode (a lone surrogate at character "
                f"{exc.start}); it cannot be stored as UTF-8"
            ) from exc
    return session_id
