"""Lattice as a drop-in for the Agents SDK 0.24 (issue 13): settings, types, hooks.

Each test uses the real ``openai-agents`` classes. Those for gaps still open
are marked ``xfail(strict=True)`` with the gap's number, so they turn into
failures (to be unmarked) the day the gap is closed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import agents
from agents import Agent, RunConfig, Runner
from agents.extensions.memory import EncryptedSession
from agents.testing import ScriptedModel, assistant_message
from sqlalchemy.ext.asyncio import AsyncEngine

import lattice
from lattice import SessionABC, SessionSettings, SQLiteSession
from lattice.integrations.transcript import transcript
from lattice.schema import LatticeTables

from .test_core import _session as on

ROOT = Path(__file__).resolve().parent.parent
KEY = "a-high-entropy-test-key-0123456789abcdef"
QUIET = RunConfig(tracing_disabled=True)


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- #2: one SessionSettings class ---------------------------------------------------


def test_session_settings_is_the_sdks_class() -> None:
    assert lattice.SessionSettings is agents.memory.SessionSettings
    assert SessionSettings is agents.SessionSettings
    assert SessionABC.session_settings is None


async def test_sessions_default_to_sdk_settings_like_the_sdk(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    sdk = agents.SQLiteSession("x")
    ours = on(engine, tables, "defaults")
    assert ours.session_settings == sdk.session_settings == agents.SessionSettings()
    assert type(ours.session_settings) is type(sdk.session_settings)
    ours.session_settings = None  # assignable, as on the SDK's classes
    assert ours.session_settings is None
    ours.session_settings = {"limit": 4}  # type: ignore[assignment]
    assert ours.session_settings == agents.SessionSettings(limit=4)
    sdk.close()


async def test_encrypted_session_over_a_session_with_a_limit(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    """The SDK rejected Lattice's former class here: TypeError ... got SessionSettings."""
    inner = on(engine, tables, "enc", session_settings=SessionSettings(limit=2))
    encrypted = EncryptedSession("enc", underlying_session=inner, encryption_key=KEY)  # type: ignore[arg-type]
    await encrypted.add_items([{"role": "user", "content": f"secret {i}"} for i in range(3)])
    got = await encrypted.get_items()
    assert [item["content"] for item in got] == ["secret 1", "secret 2"]  # type: ignore[typeddict-item]
    stored = await inner.get_items(limit=5)
    assert len(stored) == 3 and "secret" not in str(stored)  # ciphertext at rest


async def test_run_config_takes_lattice_settings(
    engine: AsyncEngine, tables: LatticeTables
) -> None:
    session = on(engine, tables, "run-config")
    await session.add_items([{"role": "user", "content": f"old {i}"} for i in range(4)])
    model = ScriptedModel([[assistant_message("ok")]])
    config = RunConfig(tracing_disabled=True, session_settings=SessionSettings(limit=1))
    await Runner.run(Agent(name="a", model=model), "new", session=session, run_config=config)
    assert transcript(model.calls[0].input) == [("user", "old 3"), ("user", "new")]


def test_without_the_sdk_lattice_has_its_own_class_with_the_same_api() -> None:
    out = run_python(
        """
        import asyncio, sys
        sys.modules["agents"] = None  # as if openai-agents were not installed
        import lattice
        S = lattice.SessionSettings
        assert S.__module__ == "lattice.protocol" and S.__name__ == "SessionSettings"
        assert S(limit=3).resolve({"limit": None}).limit == 3
        assert S(limit=3).resolve(S(limit=5)).to_dict() == {"limit": 5}
        assert lattice.SessionABC.session_settings is None

        async def main():
            s = lattice.SQLiteSession("x", session_settings={"limit": 1})
            await s.add_items([{"n": 1}, {"n": 2}])
            assert await s.get_items() == [{"n": 2}]
            assert lattice.SQLiteSession("y").session_settings == S()
        asyncio.run(main())
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_import_lattice_and_a_session_do_not_import_the_sdk() -> None:
    """The SDK takes seconds to import: only asking for SessionSettings imports it."""
    out = run_python(
        """
        import asyncio, sys
        import lattice

        async def main():
            s = lattice.SQLiteSession("x")
            await s.add_items([{"n": 1}])
            assert await s.get_items() == [{"n": 1}]
        asyncio.run(main())
        print("agents" in sys.modules)
        lattice.SQLiteSession("y").session_settings
        print("agents" in sys.modules)
        """
    )
    assert out.split() == ["False", "True"]


# -- #10: the headline usage type-checks ---------------------------------------------


def test_a_user_script_passes_mypy_strict() -> None:
    script = ROOT / "tests" / "typed" / "sdk_user.py"
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_lattice_sessions_are_sdk_sessions_at_run_time() -> None:
    assert isinstance(SQLiteSession("x"), agents.memory.Session)
