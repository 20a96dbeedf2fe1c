"""Glue between Lattice sessions and agent frameworks.

Lattice sessions need no adapter to work with the OpenAI Agents SDK's
``Runner``; what lives here is the help around it: reading items as text
(:mod:`lattice.integrations.transcript`, no extra needed) and the offline
model of ``lattice demo``, ``lattice.integrations.OfflineMemoryModel``
(needs the ``agents`` extra; answers from the stored history with no API key
or network, for examples and tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .transcript import item_role, item_text, transcript

if TYPE_CHECKING:
    from .offline_model import OfflineMemoryModel

__all__ = ["OfflineMemoryModel", "item_role", "item_text", "transcript"]


def __getattr__(name: str) -> Any:
    # OfflineMemoryModel subclasses the Agents SDK's Model: imported on first
    # use, so the transcript helpers work without the ``agents`` extra.
    if name != "OfflineMemoryModel":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .offline_model import OfflineMemoryModel

    globals()[name] = OfflineMemoryModel
    return OfflineMemoryModel
