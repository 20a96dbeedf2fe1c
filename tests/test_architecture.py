"""The layering of ``docs/architecture.md``, checked on the source itself.

No import circle among Lattice's modules, no import from a lower layer of a
higher one, no module over 500 lines, dialect and driver names tested only
where they belong, and private third-party names only in the compat module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "lattice"

# Layer of each module, lowest first (a module path prefix, as dotted names).
LAYERS: list[tuple[str, ...]] = [
    ("lattice.errors", "lattice.protocol", "lattice.items", "lattice._compat", "lattice.urls",
     "lattice.sdk_parity"),
    ("lattice.schema", "lattice.dialects"),
    ("lattice._loop_locks", "lattice.lock_waits"),
    ("lattice.engines",),
    ("lattice.drivers",),
    ("lattice.writes",),
    ("lattice.sqlalchemy_session", "lattice.sqlite_session", "lattice.openai_conversations",
     "lattice.compaction", "lattice.routing"),
    ("lattice.store", "lattice.migrations", "lattice._migration_env", "lattice._partitioning",
     "lattice.maintenance"),
    ("lattice.integrations",),
    ("lattice.cli",),
    ("lattice", "lattice.testing"),
]
# Where "is it MySQL / PostgreSQL / asyncpg?" may be asked.
NAME_TESTS_ALLOWED = ("lattice.schema", "lattice.dialects", "lattice.engines", "lattice.drivers",
                      "lattice._migration_env", "lattice._partitioning", "lattice.urls")


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    best, depth = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > depth:
                best, depth = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    # Imports only for type checkers draw no arrow at run time.
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lattice"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("lattice"):
                # "from . import x" imports the module x, not the package.
                for alias in node.names:
                    out.add(f"{target}.{alias.name}")
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_no_upward_import_and_no_circle() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {_resolve(n, modules) for n in _imports(module, path)}
        graph[module] = {t for t in targets if t and t != module}
        for target in graph[module]:
            if target == "lattice" or module == "lattice":
                continue
            if module.startswith(target + ".") and path.name != "__init__.py":
                # A module of a package reading its own package's __init__.
                assert False, f"{module} imports its package {target}; import the module itself"
            assert _layer(target) <= _layer(module), f"{module} imports higher layer {target}"
    graph = {m: {t for t in ts if t != "lattice"} for m, ts in graph.items() if m != "lattice"}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_module_is_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f"{path.relative_to(SRC)} has {lines} lines"


_NAME_TEST = re.compile(
    r"""(dialect\.name|\.driver|drivername|get_backend_name\(\))\s*(==|!=|\bin\b)"""
    r"""|["'](mysql|mariadb|postgresql|sqlite|asyncpg|aiomysql|aiosqlite|psycopg|asyncmy)["']\s*(==|!=)"""
)


def test_dialect_and_driver_names_are_tested_only_where_they_belong() -> None:
    offenders = []
    for module, path in _modules().items():
        if module.startswith(NAME_TESTS_ALLOWED):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _NAME_TEST.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "dialect/driver name tests outside their layers:\n" + "\n".join(offenders)


# A private attribute of a third-party object: "x._name" where x is not self/cls/a
# Lattice object of our own (our own privates are named after our own variables).
_PRIVATE_CALLS = re.compile(
    r"\b(_close_special|_invalidate\(|_handle_exception|_execute\(|_install_proxy|_proxy\b"
    r"|positiontup|greenlet_spawn|_on_connect_isolation_level|(?<!self)\._conn\b)"
)


def test_private_third_party_names_only_in_the_compat_module() -> None:
    offenders = []
    for module, path in _modules().items():
        if module == "lattice._compat":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE_CALLS.search(code) and "``" not in code:
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "private third-party names outside _compat:\n" + "\n".join(offenders)
