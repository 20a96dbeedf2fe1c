"""The benchmark runs end to end at tiny sizes, so it never rots (no timings asserted).

It uses its own throwaway benchmark database (``--database``), dropped at the
end, never the shared ``test`` database or the cached ``lattice_bench`` data.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from benchmarks.cli import parse_args, run
from benchmarks.datasets import DataSet, ensure_data_set
from benchmarks.impls import make_impl
from benchmarks.rss import measure

from .conftest import _check_server

# Every operation but g on SQLite; on the servers the ones whose code differs
# per dialect (raw writes, reads, pops, pools, data sets, EXPLAIN). g starts a
# child process per implementation (seconds of imports each), so its
# measurement is smoked in-process below instead.
SERVER_OPS = "a,c,d,h,f"


@pytest.mark.parametrize(
    ("backend", "ops"),
    [
        pytest.param("sqlite", "a,b,c,d,e,h,f", id="sqlite_file"),
        pytest.param("postgres", SERVER_OPS, marks=pytest.mark.postgres, id="postgres"),
        pytest.param("mysql", SERVER_OPS, marks=pytest.mark.mysql, id="mysql"),
    ],
)  # fmt: skip
def test_benchmark_smoke(backend: str, ops: str, tmp_path: Path) -> None:
    _check_server({"sqlite": "sqlite_file"}.get(backend, backend))
    name = f"lattice_bench_smoke_{uuid.uuid4().hex[:8]}"
    report = tmp_path / "bench.md"
    argv = ["--sizes", "tiny", "--backends", backend, "--ops", ops, "--database", name, "--drop",
            "--data-dir", str(tmp_path), "--markdown", str(report)]  # fmt: skip
    results = asyncio.run(run(parse_args(argv), argv))

    values = results.values[backend]
    expected = set(ops.split(","))
    expected |= {f"{k}{s}" for k in ("d", "h") if k in expected for s in ("1k", "r")}
    assert set(values) == expected
    for key, per_impl in values.items():
        impls = ["lattice", "caller", "sdk", "raw"]
        if backend == "postgres" and key[0] in ("e", "h"):
            impls.append("rawtx")  # the raw pop in BEGIN ... COMMIT
        assert {i for i, v in per_impl.items() if v} == set(impls), key
        for impl in impls:
            assert len(per_impl[impl]) == 1, (key, impl)
            assert math.isfinite(per_impl[impl][0]) and per_impl[impl][0] >= 0, (key, impl)
    text = report.read_text()
    assert "| backend | operation |" in text
    assert "caller-made" in text and "Lattice-made" in text
    assert "d: get_items(limit=20)" in text and "h: pop_item" in text
    assert "resumed data set" in text
    assert not any(tmp_path.glob(f"{name}.sqlite*"))  # --drop removed the SQLite file


def test_rss_measurement_smoke(tmp_path: Path) -> None:
    """Operation g's measurement, in this process, on a five-item session."""
    url = URL.create("sqlite+aiosqlite", database=str(tmp_path / "g.sqlite"))
    data = DataSet("g", 5, 1, 5, 256)

    async def main() -> float:
        impl = make_impl("lattice", url)
        try:
            assert await ensure_data_set(impl, data)
            assert not await ensure_data_set(impl, data)  # cached: same sizes and schema
        finally:
            await impl.close()
        return await measure("lattice", url.render_as_string(), data.prefix(impl), 5)

    growth = asyncio.run(main())
    assert math.isfinite(growth) and growth >= 0
