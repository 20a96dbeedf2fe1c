"""URL settings for clusters: several hosts, and a pooler in transaction mode.

What reaches the driver (``lattice.urls.connect_options``); the behaviour on
real clusters is in tests/cluster/ (``make test-cluster``).
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from lattice.urls import UrlError, connect_options, normalize


def _options(url: str, **kwargs: object) -> tuple[str, dict[str, object]]:
    parsed, out = connect_options(normalize(url), dict(kwargs))
    return parsed.render_as_string(hide_password=False), out


def test_several_hosts_are_left_for_sqlalchemy_to_hand_to_asyncpg() -> None:
    url = (
        "postgresql+asyncpg://app@/db?host=a:5432&host=b:5433&target_session_attrs=read-write"
    )
    parsed, kwargs = _options(url)
    assert make_url(parsed).query["host"] == ("a:5432", "b:5433")
    assert kwargs["connect_args"] == {"dsn": "postgresql://?target_session_attrs=read-write"}
    with pytest.raises(UrlError, match="sslmode is given more than once"):
        _options("postgresql+asyncpg://app@/db?host=a&host=b&sslmode=require&sslmode=disable")


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("postgresql+asyncpg://app@h/db?statement_cache_size=0", {}),
        ("postgresql+asyncpg://app@h/db", {"connect_args": {"statement_cache_size": 0}}),
        ("postgresql://app@h/db?statement_cache_size=0", {}),
    ],
    ids=["url", "connect_args", "driverless-url"],
)
def test_statement_cache_off_means_unnamed_statements(
    url: str, kwargs: dict[str, object]
) -> None:
    parsed, out = _options(url, **kwargs)
    args = out["connect_args"]
    assert isinstance(args, dict)
    assert args == {"statement_cache_size": 0, "prepared_statement_name_func": args.get(
        "prepared_statement_name_func"
    )}
    assert args["prepared_statement_name_func"]() == ""
    assert "statement_cache_size" not in make_url(parsed).query


def test_a_name_function_of_the_callers_own_is_kept() -> None:
    def name() -> str:
        return "mine"

    _, out = _options(
        "postgresql+asyncpg://app@h/db",
        connect_args={"statement_cache_size": 0, "prepared_statement_name_func": name},
    )
    assert out["connect_args"]["prepared_statement_name_func"] is name  # type: ignore[index]


def test_the_statement_cache_left_on_changes_nothing() -> None:
    _, out = _options("postgresql+asyncpg://app@h/db?statement_cache_size=100")
    assert out == {"connect_args": {"statement_cache_size": 100}}
    assert _options("postgresql+asyncpg://app@h/db") == ("postgresql+asyncpg://app@h/db", {})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+asyncpg://h/db?statement_cache_size=none", "statement_cache_size=none"),
        ("postgresql+asyncpg://h/db?statement_cache_size=-1", "whole number"),
        ("postgresql+psycopg://h/db?prepare_threshold=never", "prepare_threshold=never"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(UrlError, match=message):
        _options(url)


@pytest.mark.parametrize(("value", "expected"), [("none", None), ("None", None), ("3", 3)])
def test_psycopg_prepare_threshold(value: str, expected: int | None) -> None:
    parsed, out = _options(f"postgresql+psycopg://app@h/db?prepare_threshold={value}")
    assert out == {"connect_args": {"prepare_threshold": expected}}
    assert parsed == "postgresql+psycopg://app@h/db"
