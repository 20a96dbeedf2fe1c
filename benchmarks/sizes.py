"""How big each operation is: the issue's full sizes, a quick run, and a smoke run."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["SIZES", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """Sizes of every operation (field names follow the operation letters)."""

    reps: int
    a_calls: int  # a: add_items of one item, sequential calls
    b_calls: int  # b: add_items calls ...
    b_batch: int  # ... of this many items
    c_items: int  # c: get_items() of a session this long ...
    c_reads: int  # ... read this many times (median)
    d_rows: int  # d/h: rows in the big table ...
    d_sessions: int  # ... across this many sessions ...
    d_big: int  # ... one of them holding this many items
    d_small_rows: int  # the same table shape with this many rows (flatness check)
    r_big: int  # dr/hr: a session of this many items, resumed after ...
    r_rows: int  # ... this many rows of other sessions' traffic (--resumed-rows)
    d_reads: int  # d: get_items(limit=20) reads per rep (median)
    e_pops: int  # e: sequential pops
    h_pops: int  # h: pops on the big session per rep (median)
    f_sessions: int  # f: sessions at once ...
    f_calls: int  # ... each making this many add_items calls ...
    f_batch: int  # ... of this many items
    g_items: int  # g: items read in one get_items() ...
    g_item_bytes: int  # ... each about this large

    def describe(self) -> str:
        """A one-line summary for logs and the docs page."""
        return ", ".join(f"{f.name}={getattr(self, f.name):,}" for f in fields(self))


SIZES = {
    # What the issue asks for.
    "full": Sizes(
        reps=3, a_calls=1000, b_calls=100, b_batch=100, c_items=1000, c_reads=20,
        d_rows=1_100_000, d_sessions=10_000, d_big=100_000, d_small_rows=1000,
        r_big=20_000, r_rows=1_000_000, d_reads=50,
        e_pops=500, h_pops=20, f_sessions=50, f_calls=20, f_batch=2,
        g_items=10_000, g_item_bytes=2048,
    ),
    # A few minutes for checking a change; the big table is a tenth of the size.
    "quick": Sizes(
        reps=3, a_calls=200, b_calls=20, b_batch=100, c_items=1000, c_reads=10,
        d_rows=110_000, d_sessions=1000, d_big=10_000, d_small_rows=1000,
        r_big=2000, r_rows=100_000, d_reads=20,
        e_pops=100, h_pops=10, f_sessions=50, f_calls=5, f_batch=2,
        g_items=2000, g_item_bytes=2048,
    ),
    # The smoke run in ``make test``: every code path, seconds in all.
    "tiny": Sizes(
        reps=1, a_calls=3, b_calls=2, b_batch=3, c_items=5, c_reads=2,
        d_rows=120, d_sessions=6, d_big=50, d_small_rows=30,
        r_big=10, r_rows=60, d_reads=2,
        e_pops=3, h_pops=2, f_sessions=3, f_calls=2, f_batch=2,
        g_items=5, g_item_bytes=256,
    ),
}  # fmt: skip
