"""Every Python example in the README and the getting-started docs runs as it is.

Each ```` ```python ```` block of the files below is saved to a fresh
directory and run with this interpreter, without an API key. A block that
cannot run here says why in an HTML comment on the line before it
(``<!-- not run: needs OPENAI_API_KEY -->``); such blocks are counted, so
marking everything would fail the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FILES = ["README.md", "docs/index.md", "docs/agents.md", "docs/advanced.md"]
_BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*) -->\n)?```python\n(?P<code>.*?)\n```", re.S)


def _blocks() -> list[tuple[str, int, str, str | None]]:
    found = []
    for name in FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            found.append((name, line, match.group("code"), match.group("why")))
    return found


BLOCKS = _blocks()
RUNNABLE = [b for b in BLOCKS if b[3] is None]


def test_most_examples_are_runnable() -> None:
    skipped = [f"{name}:{line} ({why})" for name, line, _, why in BLOCKS if why]
    assert len(RUNNABLE) >= 12 and len(skipped) <= 2, skipped


@pytest.mark.parametrize(
    ("name", "line", "code"),
    [pytest.param(n, ln, c, id=f"{n}:{ln}") for n, ln, c, _ in RUNNABLE],
)
def test_example_runs(name: str, line: int, code: str, tmp_path: Path) -> None:
    assert "await " not in "\n".join(
        ln for ln in code.splitlines() if not ln.startswith((" ", "\t"))
    ), f"{name}:{line} uses top-level await"
    script = tmp_path / "example.py"
    script.write_text(code + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    env["PYTHONWARNINGS"] = "error::RuntimeWarning"  # a coroutine never awaited
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{name}:{line}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, (
        f"{name}:{line}\n{done.stderr}"
    )
