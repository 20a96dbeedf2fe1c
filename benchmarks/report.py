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

    def flatness(self, backend: str, op: str, impl: str = "lattice") -> float:
        """Big-table time over 1,000-row-table time, within each rep (median)."""
        big, small = self.values[backend][op][impl], self.values[backend][f"{op}1k"][impl]
        return _median_ratio(big, small)

    def rows(self) -> list[list[str]]:
        """One row per (backend, op): values, ratios and whether each target is met."""
        out = []
        for backend, ops in self.values.items():
            for key in OPS:
                if key not in ops or "lattice" not in ops[key]:
                    continue
                op = OPS[key]
                row = [backend, f"{key}. {op.title}", op.unit]
                for impl in ("lattice", "sdk", "raw"):
                    row.append(_fmt(self.median(backend, key, impl)) if ops[key][impl] else "–")
                raw = self.ratio(backend, key, "raw") if ops[key]["raw"] else None
                sdk = self.ratio(backend, key, "sdk") if ops[key]["sdk"] else None
                better = ">=" if op.higher_is_better else "<="
                row.append("–" if raw is None else f"{raw:.2f}")
                row.append(f"{better} {op.target}")
                row.append("–" if raw is None else _verdict(raw, op.target, op.higher_is_better))
                row.append("–" if sdk is None else f"{sdk:.2f}")
                row.append("–" if sdk is None else _verdict(sdk, 1.0, op.higher_is_better))
                out.append(row)
        return out

    def flat_rows(self) -> list[list[str]]:
        out = []
        for backend, ops in self.values.items():
            for key in ("d", "h"):
                if key in ops and f"{key}1k" in ops:
                    for impl in ("lattice", "sdk", "raw"):
                        if ops[key][impl] and ops[f"{key}1k"][impl]:
                            value = self.flatness(backend, key, impl)
                            row = [backend, key, impl, f"{value:.2f}"]
                            row.append(_verdict(value, 1.5, False) if impl == "lattice" else "")
                            out.append(row)
        return out


HEADER = ["backend", "operation", "unit", "Lattice", "SDK", "raw", "L/raw", "target", "",
          "L/SDK", ""]  # fmt: skip
FLAT_HEADER = ["backend", "op", "impl", "1.1M rows / 1k rows", "≤ 1.5"]


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
