"""Parsing the options of ``lattice sessions``: durations, times, metadata pairs, filters."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, cast

import typer

from ..store.model import OnConflict

__all__ = ["parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or ``"2w"`` as a timedelta.

    Raises:
        typer.BadParameter: anything else.
    """
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(
            f"{text!r} is not a duration; use a number and a unit: 45s, 90m, 12h, 30d, 2w"
        )
    try:
        age = dt.timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        dt.datetime.now(dt.timezone.utc) - age  # the cutoff must be a representable time
    except OverflowError:
        raise typer.BadParameter(f"{text!r} reaches back before the year 1") from None
    return age


def _parse_time(text: str | None, option: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{option}: {text!r} is not an ISO 8601 date or time") from None
    # A time without an offset is taken as UTC, which is what Lattice stores.
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _parse_meta(pairs: list[str] | None) -> dict[str, Any] | None:
    if not pairs:
        return None
    metadata: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--meta {pair!r}: use KEY=VALUE")
        try:
            # VALUE is JSON when it parses (true, 3, "x", [1]), else plain text.
            metadata[key] = json.loads(raw)
        except ValueError:
            metadata[key] = raw
    return metadata


def _filters(
    prefix: str | None,
    owner: str | None,
    meta: list[str] | None,
    after: str | None,
    before: str | None,
) -> dict[str, Any]:
    """The store's filter keywords from the shared command-line options."""
    return {
        "prefix": prefix,
        "owner": owner,
        "metadata": _parse_meta(meta),
        "updated_after": _parse_time(after, "--after"),
        "updated_before": _parse_time(before, "--before"),
    }


def _check_policy(on_conflict: str) -> OnConflict:
    if on_conflict not in ("skip", "replace", "append"):
        raise typer.BadParameter(
            f"{on_conflict!r}: choose skip, replace or append", param_hint="--on-conflict"
        )
    return cast(OnConflict, on_conflict)


