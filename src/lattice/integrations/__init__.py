"""Glue between Lattice sessions and agent frameworks.

Lattice sessions need no adapter to work with the OpenAI Agents SDK's
``Runner``; what lives here is the help around it: reading items as text
(:mod:`lattice.integrations.transcript`, no extra needed) and the offline
model of ``lattice demo`` (:mod:`lattice.integrations.offline_model`, needs
the ``agents`` extra).
"""

from __future__ import annotations

from .transcript import item_role, item_text, transcript

__all__ = ["item_role", "item_text", "transcript"]
