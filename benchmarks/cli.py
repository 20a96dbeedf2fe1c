"""The runner: ``python -m benchmarks [--sizes full|quick|tiny] [--backends ...]``.

For each backend, in one process: prepare the benchmark database (never the
shared ``test`` one), build or reuse the data sets, then for each rep run
every operation once per implementation, rotating the order of the
implementations from rep to rep so that drift on a busy machine falls on
all of them alike. Ratios are taken within a rep, then the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from lattice.engines import make_engine

from . import ops
from .datasets import DataSet, ensure_data_set
from .explain import explain_plans
from .impls import IMPLS, POP_ONLY_IMPLS, Impl, make_impl
from .report import FLAT_HEADER, HEADER, Results, markdown_table, text_table
from .sizes import SIZES, Sizes

__all__ = ["main"]

SERVERS = {
    "postgres": os.environ.get(
        "LATTICE_BENCH_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("LATTICE_BENCH_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
}
BACKENDS = ("sqlite", "postgres", "mysql")
ALL_OPS = ("a", "b", "c", "d", "e", "h", "f", "g")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def prepare_database(backend: str, name: str, data_dir: Path) -> URL:
    """The URL of the benchmark's own database on ``backend`` (created if missing)."""
    if backend == "sqlite":
        data_dir.mkdir(parents=True, exist_ok=True)
        return URL.create("sqlite+aiosqlite", database=str(data_dir / f"{name}.sqlite"))
    base = make_url(SERVERS[backend])
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            if backend == "postgres":
                found = await conn.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                )
                if not found:
                    await conn.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                await conn.execute(
                    text(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
                )
    finally:
        await admin.dispose()
    return base.set(database=name)


async def drop_database(backend: str, url: URL) -> None:
    """Remove the benchmark database (``--drop``)."""
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        return
    admin = make_engine(make_url(SERVERS[backend]), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            if backend == "postgres":
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            else:
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
    finally:
        await admin.dispose()


async def _server_version(impl: Impl) -> str:
    query = {"postgresql": "SELECT version()", "sqlite": "SELECT sqlite_version()"}.get(
        impl.engine.dialect.name, "SELECT version()"
    )
    async with impl.engine.connect() as conn:
        return str(await conn.scalar(text(query))).split(" on ")[0]


async def _rss(impl: Impl, url: URL, data: DataSet) -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.rss", impl.name,
        url.render_as_string(hide_password=False), data.prefix(impl), str(data.rows),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"benchmarks.rss failed for {impl.name} (exit {proc.returncode})")
    return float(json.loads(out)["growth_mib"])


POP_OPS = ("e", "h")


async def run_backend(
    backend: str, url: URL, sizes: Sizes, wanted: tuple[str, ...], results: Results,
    rebuild: bool, info: dict[str, Any],
) -> None:  # fmt: skip
    # The raw pop in BEGIN ... COMMIT only where the raw pop is otherwise one
    # autocommit statement with a weaker guarantee (PostgreSQL).
    names = [*IMPLS, *(POP_ONLY_IMPLS if backend == "postgres" else ())]
    impls = {name: make_impl(name, url) for name in names}
    for impl in impls.values():
        await impl.open()
    try:
        info.setdefault("servers", {})[backend] = await _server_version(impls["lattice"])
        big = DataSet("big", sizes.d_rows, sizes.d_sessions, sizes.d_big)
        small_big = max(sizes.d_small_rows * sizes.d_big // sizes.d_rows, 1)
        small = DataSet("small", sizes.d_small_rows, 10, small_big)
        resumed = DataSet(
            "resumed", sizes.r_big + sizes.r_rows, sizes.d_sessions, sizes.r_big, resumed=True
        )
        g = DataSet("g", sizes.g_items, 1, sizes.g_items, sizes.g_item_bytes)
        for impl in (impls["lattice"], impls["sdk"]):  # raw and caller share Lattice's data
            for data, op in ((big, "d"), (small, "d"), (resumed, "d"), (g, "g")):
                if op in wanted or (op == "d" and "h" in wanted):
                    await ensure_data_set(impl, data, rebuild=rebuild)
        for impl in impls.values():
            await impl.create_tables(f"{impl.name}_w", drop=True)
        for rep in range(sizes.reps):
            started = time.perf_counter()
            for key in wanted:
                here = [n for n in names if n in IMPLS or key in POP_OPS]
                order = [impls[here[(rep + i) % len(here)]] for i in range(len(here))]
                for impl in order:
                    work = f"{impl.name}_w"
                    if key in ("d", "h"):
                        run = ops.op_d if key == "d" else ops.op_h
                        for data, suffix in ((big, ""), (small, "1k"), (resumed, "r")):
                            value = await run(impl, data, sizes)
                            results.add(backend, f"{key}{suffix}", impl.name, value)
                    elif key == "g":
                        results.add(backend, key, impl.name, await _rss(impl, url, g))
                    else:
                        value = await getattr(ops, f"op_{key}")(impl, work, sizes)
                        results.add(backend, key, impl.name, value)
            elapsed = time.perf_counter() - started
            _log(f"  {backend} rep {rep + 1}/{sizes.reps} done in {elapsed:.1f} s")
        if "d" in wanted or "h" in wanted:
            plans = info.setdefault("explain", {}).setdefault(backend, {})
            for data in (big, small, resumed):
                plans[data.name] = await explain_plans(impls["lattice"], data)
    finally:
        for impl in impls.values():
            await impl.close()


def machine_info() -> dict[str, Any]:
    from importlib.metadata import version

    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": {
            name: version(name)
            for name in ("sqlalchemy", "asyncpg", "aiomysql", "aiosqlite", "openai-agents")
        },
        "load_before": os.getloadavg(),
    }


def write_markdown(path: Path, results: Results, sizes: Sizes, info: dict[str, Any],
                   argv: list[str]) -> None:  # fmt: skip
    lines = [
        f"Command: `python -m benchmarks {' '.join(argv)}`",
        "",
        f"Machine: {info['cpus']} CPUs, {info['memory_gib']} GiB RAM, {info['platform']}, "
        f"Python {info['python']}; load average before/after "
        f"{info['load_before'][0]:.2f}/{info['load_after'][0]:.2f}.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()) + ".",
        "Servers: " + "; ".join(f"{k}: {v}" for k, v in info.get("servers", {}).items()) + ".",
        f"Sizes: {sizes.describe()}.",
        "",
        markdown_table(HEADER, results.rows()),
        "",
        markdown_table(FLAT_HEADER, results.flat_rows()),
        "",
    ]
    for backend, sets in info.get("explain", {}).items():
        for name, plans in sets.items():
            for label, sql, plan in plans:
                lines += [f"**{backend}, {name} data set, {label}**", "", "```sql", sql, "```",
                          "", "```text", plan, "```", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="sizes",
                        help="same as --sizes quick")  # fmt: skip
    parser.add_argument("--reps", type=int, help="repetitions (default: per sizes, >= 3)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated: sqlite,postgres,mysql")  # fmt: skip
    parser.add_argument("--ops", default=",".join(ALL_OPS), help="comma-separated op letters")
    parser.add_argument("--database", default="lattice_bench",
                        help="name of the benchmark's own database / SQLite file")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=Path(".bench"),
                        help="where the SQLite database lives")  # fmt: skip
    parser.add_argument("--rebuild", action="store_true", help="rebuild cached data sets")
    parser.add_argument("--drop", action="store_true", help="drop the database afterwards")
    parser.add_argument("--skip-unreachable", action="store_true",
                        help="skip a server that does not answer instead of failing")  # fmt: skip
    parser.add_argument("--markdown", type=Path, help="also write the tables and plans here")
    parser.add_argument("--resumed-rows", type=int,
                        help="rows of others' traffic after the resumed session (dr, hr); "
                        "default per sizes (full: 1,000,000)")  # fmt: skip
    args = parser.parse_args(argv)
    backends = tuple(b for b in args.backends.split(",") if b)
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    wanted = tuple(o for o in ALL_OPS if o in args.ops.split(","))
    unknown = set(args.ops.split(",")) - set(ALL_OPS)
    if unknown:
        parser.error(f"unknown op(s): {', '.join(sorted(unknown))}")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.resumed_rows is not None and args.resumed_rows < 1:
        parser.error("--resumed-rows must be at least 1")
    args.backends, args.ops = backends, wanted
    return args


async def run(args: argparse.Namespace, argv: list[str]) -> Results:
    sizes = SIZES[args.sizes]
    if args.reps is not None:
        sizes = replace(sizes, reps=args.reps)
    if args.resumed_rows is not None:
        sizes = replace(sizes, r_rows=args.resumed_rows)
    results = Results()
    info = machine_info()
    for backend in args.backends:
        try:
            url = await prepare_database(backend, args.database, args.data_dir)
        except (OSError, Exception) as exc:
            if not args.skip_unreachable:
                raise
            _log(f"{backend}: skipped, server unreachable ({type(exc).__name__}: {exc})")
            continue
        _log(f"{backend}: {sizes.reps} reps of {', '.join(args.ops)} ({args.sizes} sizes)")
        try:
            await run_backend(backend, url, sizes, args.ops, results, args.rebuild, info)
        finally:
            if args.drop:
                await drop_database(backend, url)
    info["load_after"] = os.getloadavg()
    print(text_table(HEADER, results.rows()))
    flat = results.flat_rows()
    if flat:
        print()
        print(text_table(FLAT_HEADER, flat))
    if args.markdown:
        write_markdown(args.markdown, results, sizes, info, argv)
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    asyncio.run(run(args, argv))
