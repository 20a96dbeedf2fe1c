"""Medians, ratios within each rep, the console table and the Markdown tables."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from .ops import OPS

__all__ = ["Results"]

Values = dict[str, list[float]]  # implementation -> one value per rep


@dataclass
class Results:
    """Every measured value: ``values[backend][op][impl]`` is one value per rep."""

    values: dict[str, dict[str, Values]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    )

    def add(self, backend: str, op: str, impl: str, value: float) -> None:
        self.values[backend][op][impl].append(value)

    def median(self, backend: str, op: str, impl: str) -> float:
        return statistics.median(self.values[backend][op][impl])

    def ratio(self, backend: str, op: str, other: str, impl: str = "lattice") -> float:
        """Median over reps of ``impl``/``other``, each ratio taken within one rep."""
        ours, theirs = self.values[backend][op][impl], self.values[backend][op][other]
        return _median_ratio(ours, theirs)

    def flatness(self, backend: str, op: str, impl: str = "lattice", base: str = "") -> float:
        """Big-table time over 1,000-row-table time, within each rep (median)."""
        big = self.values[backend][op][impl]
        small = self.values[backend][base or f"{op}1k"][impl]
        return _median_ratio(big, small)

    def rows(self) -> list[list[str]]:
        """One row per (backend, op, Lattice's engine): values, ratios, targets met.

        ``lattice`` runs on an engine Lattice made, ``caller`` on one the
        application made. Pops on PostgreSQL get one more row per engine,
        against the raw pop in BEGIN ... COMMIT (``rawtx``).
        """
        out = []
        for backend, ops in self.values.items():
            for key in OPS:
                if key not in ops or "lattice" not in ops[key]:
                    continue
                for engine in ("lattice", "caller"):
                    if not ops[key][engine]:
                        continue
                    for raw in ("raw", "rawtx"):
                        if ops[key][raw]:
                            out.append(self._row(backend, key, engine, raw))
        return out

    def _row(self, backend: str, key: str, engine: str, raw: str) -> list[str]:
        op, ops = OPS[key], self.values[backend]
        title = f"{key}. {op.title}" + (" (raw in BEGIN…COMMIT)" if raw == "rawtx" else "")
        row = [backend, title, op.unit, ENGINES[engine]]
        for impl in (engine, "sdk", raw):
            row.append(_fmt(self.median(backend, key, impl)) if ops[key][impl] else "–")
        to_raw = self.ratio(backend, key, raw, engine)
        sdk = self.ratio(backend, key, "sdk", engine) if ops[key]["sdk"] else None
        better = ">=" if op.higher_is_better else "<="
        row.append(f"{to_raw:.2f}")
        row.append(f"{better} {op.target}")
        row.append(_verdict(to_raw, op.target, op.higher_is_better))
        row.append("–" if sdk is None else f"{sdk:.2f}")
        row.append("–" if sdk is None else _verdict(sdk, 1.0, op.higher_is_better))
        return row

    def flat_rows(self) -> list[list[str]]:
        out = []
        for backend, ops in self.values.items():
            for key, base in FLAT_PAIRS:
                if key in ops and base in ops:
                    for impl in ("lattice", "caller", "sdk", "raw"):
                        if ops[key][impl] and ops[base][impl]:
                            value = self.flatness(backend, key, impl, base)
                            row = [backend, f"{key} / {base}", impl, f"{value:.2f}"]
                            lattice = impl in ("lattice", "caller")
                            row.append(_verdict(value, 1.5, False) if lattice else "")
                            out.append(row)
        return out


#: Which engine a Lattice row ran on.
ENGINES = {"lattice": "Lattice-made", "caller": "caller-made"}
#: Big or resumed layout over the 1,000-row table: flat cost from 1k to 1M+ rows.
FLAT_PAIRS = (("d", "d1k"), ("dr", "d1k"), ("h", "h1k"), ("hr", "h1k"))

HEADER = ["backend", "operation", "unit", "engine", "Lattice", "SDK", "raw", "L/raw", "target",
          "", "L/SDK", ""]  # fmt: skip
FLAT_HEADER = ["backend", "op", "impl", "big or resumed / 1k rows", "≤ 1.5"]


def _median_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median of per-rep ratios; NaN when undefined (a zero, e.g. no RSS growth at tiny sizes)."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=False) if b]
    return statistics.median(ratios) if ratios else math.nan


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    if math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table for the console."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
