"""The migration scripts ship in the wheel: build it, install it, migrate from it.

The wheel goes into a fresh virtual environment with nothing else installed;
its dependencies come from this environment through a ``.pth`` line (so no
package index is needed), which cannot expose the checkout: the editable
install's own ``.pth`` is not processed from there. The test then checks that
``lattice`` and its scripts were imported from the new environment.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lattice import migrations

REPO = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_editable_install_finds_the_checkout_scripts() -> None:
    if not (REPO / "migrations" / "env.py").is_file():
        pytest.skip("not running from a checkout")
    assert migrations.script_location() == REPO / "migrations"


def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, REPO, cwd=REPO
    )
    (wheel,) = dist.glob("lattice_sessions-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "--quiet", wheel, cwd=tmp_path)  # fmt: skip
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
               cwd=tmp_path).strip()  # fmt: skip
    (Path(site) / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    probe = "import lattice, lattice.migrations as m; print(lattice.__file__, m.script_location())"
    where = run(python, "-c", probe, cwd=tmp_path).split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    assert Path(where[1]).name == "_migrations"

    db = tmp_path / "from-wheel.db"
    out = run(venv / "bin" / "lattice", "db", "upgrade", "--url", f"sqlite+aiosqlite:///{db}",
              cwd=tmp_path)  # fmt: skip
    head = asyncio.run(migrations.history())[0].revision
    assert f"At revision {head}." in out
    assert asyncio.run(migrations.check(f"sqlite+aiosqlite:///{db}")) == head
