"""Database URLs: parsing, checking, libpq parameters for asyncpg, and showing them safely.

Everything Lattice does with a URL before it reaches SQLAlchemy lives here:

* :func:`normalize` parses a URL, maps a driverless one (``postgresql://``)
  to the async driver Lattice installs, and refuses up front what cannot
  work (a synchronous driver, a database Lattice does not support, a port
  out of range) with a :class:`UrlError` that says what to write instead.
* :func:`connect_options` moves the libpq parameters that managed PostgreSQL
  providers put in their URLs (``?sslmode=require``, ``sslrootcert=...``,
  ``connect_timeout=10``, ...) to where asyncpg reads them.
* :func:`redact` and :func:`shown` hide passwords: in a URL, in its query
  string (``?password=...``), and in text holding a mistyped URL that does
  not parse. Every message Lattice builds from a URL goes through them.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "LIBPQ_PARAMETERS",
    "UrlError",
    "connect_options",
    "normalize",
    "redact",
    "same_database",
    "shown",
    "sqlite_path",
]


class UrlError(ValueError):
    """A database URL Lattice cannot use. The message never holds a password."""


# Plain URLs are accepted for convenience and mapped to the async driver
# Lattice installs for that database.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
}
_BACKENDS = {"sqlite", "postgresql", "mysql", "mariadb"}
# Drivers SQLAlchemy knows that cannot run under asyncio.
_SYNC_DRIVERS = {
    "sqlite": {"pysqlite", "pysqlcipher"},
    "postgresql": {"psycopg2", "psycopg2cffi", "pg8000", "pygresql", "pyodbc"},
    "mysql": {"pymysql", "mysqldb", "mysqlconnector", "cymysql", "pyodbc", "mariadbconnector"},
}
_SYNC_DRIVERS["mariadb"] = _SYNC_DRIVERS["mysql"]

#: libpq URL parameters Lattice hands to asyncpg's own parser (which knows them).
LIBPQ_PARAMETERS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "service",
        "passfile",
        "application_name",
        "options",
    }
)
# libpq parameters asyncpg has no equivalent for: refused with this advice.
_UNSUPPORTED_LIBPQ = {
    "channel_binding": "asyncpg authenticates with SCRAM without channel binding",
    "gssencmode": "asyncpg does not encrypt with GSSAPI; use sslmode",
    "requiressl": "use sslmode=require",
    "sslcompression": "TLS compression is not supported",
    "keepalives": "asyncpg sets TCP keepalives itself",
    "keepalives_idle": "asyncpg sets TCP keepalives itself",
    "keepalives_interval": "asyncpg sets TCP keepalives itself",
    "keepalives_count": "asyncpg sets TCP keepalives itself",
    "tcp_user_timeout": "asyncpg has no such setting",
    "hostaddr": "put the address in the host part of the URL",
    "load_balance_hosts": "asyncpg has no such setting",
}
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# Secrets in free text: "//user:secret@" (also in a URL whose "://" is
# mistyped) and password-like query parameters.
_USERINFO = re.compile(r"(//[^/\s:@'\"]*):[^\s@'\"]*@")
_SCHEME_USERINFO = re.compile(r"(^|[\s'\"(])([\w+.-]+:[^\s/:@'\"]*):[^\s@/'\"]*@")
_QUERY_SECRET = re.compile(
    r"((?:^|[?&;\s'\"])(?:password|passwd|pwd|sslpassword)=)[^&\s'\"]*", re.IGNORECASE
)
_SECRET_KEYS = ("password", "passwd", "pwd", "sslpassword")
_HIDDEN = "***"


def redact(text: str) -> str:
    """``text`` with every password it may hold replaced by ``***``.

    Works on any text, URLs that do not parse included:
    ``postgresql+asyncpg//app:pw@host/db`` becomes
    ``postgresql+asyncpg//app:***@host/db``, ``?password=pw`` becomes
    ``?password=***``.
    """
    text = _USERINFO.sub(rf"\1:{_HIDDEN}@", text)
    text = _SCHEME_USERINFO.sub(rf"\1\2:{_HIDDEN}@", text)
    return _QUERY_SECRET.sub(rf"\1{_HIDDEN}", text)


def shown(url: str | URL) -> str:
    """``url`` for messages and logs: no password, in the URL or in its query string."""
    if isinstance(url, str):
        text = url
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            return redact(text)
    secrets = {key: _HIDDEN for key in url.query if key.lower() in _SECRET_KEYS}
    if secrets:
        url = url.update_query_dict(secrets)
    return url.render_as_string(hide_password=True)


def normalize(url: str | URL) -> URL:
    """Parse and check ``url``; map a driverless URL to Lattice's async driver.

    Raises:
        UrlError: the URL does not parse, names a database Lattice does not
            support or a synchronous driver, or has a port out of range.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
        port = parsed.port
    except (ArgumentError, ValueError):
        text = redact(url if isinstance(url, str) else repr(url))
        raise UrlError(
            f"not a database URL: {text!r}; write dialect[+driver]://user@host/db, "
            "e.g. postgresql+asyncpg://app@db.example.com/app"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in _BACKENDS:
        raise UrlError(
            f"Lattice works with SQLite, PostgreSQL and MySQL/MariaDB, not {backend!r} "
            f"({shown(parsed)})"
        )
    if port is not None and not 1 <= port <= 65535:
        raise UrlError(f"port {port} is out of range (1-65535) in {shown(parsed)}")
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver:
        return parsed.set(drivername=driver)
    if parsed.get_driver_name() in _SYNC_DRIVERS[backend]:
        wanted = _ASYNC_DRIVERS[backend]
        raise UrlError(
            f"{parsed.drivername}:// is a synchronous driver; Lattice runs on asyncio: "
            f"write {wanted}:// (or {backend}://)"
        )
    return parsed


def connect_options(url: URL, engine_kwargs: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """``url`` and ``engine_kwargs`` with libpq URL parameters put where asyncpg reads them.

    SQLAlchemy passes every query parameter to ``asyncpg.connect()`` as a
    keyword, and asyncpg takes ``ssl=``, not libpq's ``sslmode=``. The
    parameters in :data:`LIBPQ_PARAMETERS` go to asyncpg's own libpq-style
    parser instead (``connect_args={"dsn": "postgresql://?sslmode=..."}``,
    which fills only what the URL does not set), and ``connect_timeout``
    becomes asyncpg's ``timeout``. For aiomysql, which takes only an
    ``ssl.SSLContext``, ``ssl_ca``/``ssl_capath``/``ssl_cert``/``ssl_key``/
    ``ssl_check_hostname`` become one. asyncpg's ``statement_cache_size=0``
    and psycopg's ``prepare_threshold=none`` (behind PgBouncer in transaction
    mode) become driver arguments, the first with SQLAlchemy's statements
    unnamed. Other URLs are returned as given.

    Raises:
        UrlError: a libpq parameter asyncpg cannot honour, or a bad value.
    """
    kwargs = dict(engine_kwargs)
    if url.get_driver_name() == "aiomysql":
        return _mysql_tls(url, kwargs)
    if url.get_driver_name() == "psycopg":
        return _psycopg_prepare(url, kwargs)
    if url.get_driver_name() != "asyncpg":
        return url, kwargs
    url, kwargs = _asyncpg_statements(url, kwargs)
    libpq: dict[str, str] = {}
    connect_args: dict[str, Any] = {}
    for key, value in url.query.items():
        if key == "host":
            # ?host=a:5432&host=b:5432 lists the servers to try in turn (a
            # primary and its standbys): SQLAlchemy hands the list to asyncpg.
            continue
        if not isinstance(value, str):
            raise UrlError(f"{key} is given more than once in {shown(url)}")
        if key in _UNSUPPORTED_LIBPQ:
            raise UrlError(
                f"the URL parameter {key}={value} is not supported with asyncpg "
                f"({_UNSUPPORTED_LIBPQ[key]}); remove it from {shown(url)}"
            )
        if key == "sslmode" and value not in _SSL_MODES:
            raise UrlError(f"sslmode={value}: use one of {', '.join(_SSL_MODES)}")
        if key == "connect_timeout":
            connect_args["timeout"] = _seconds(value, url)
        elif key in LIBPQ_PARAMETERS:
            libpq[key] = value
    if not libpq and not connect_args:
        return url, kwargs
    if libpq:
        connect_args["dsn"] = "postgresql://?" + urlencode(libpq)
    moved = [key for key in url.query if key in libpq or key == "connect_timeout"]
    url = url.difference_update_query(moved)
    kwargs["connect_args"] = {**connect_args, **(kwargs.get("connect_args") or {})}
    return url, kwargs


def _unnamed_statement() -> str:
    """The name SQLAlchemy's asyncpg adapter gives its statements: none (unnamed)."""
    return ""


def _count(value: Any, key: str, url: URL) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise UrlError(f"{key}={value}: give a whole number, e.g. {key}=0 ({shown(url)})")


def _asyncpg_statements(url: URL, kwargs: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """``statement_cache_size=0`` (for a pooler in transaction mode) made whole.

    asyncpg's own setting turns its statement cache off: each statement is
    then unnamed, and parsed again in the same exchange as each execution, so
    a pooler in transaction mode (PgBouncer) can hand every statement to any
    server connection. SQLAlchemy's adapter prepares statements itself, by
    name unless told otherwise: its names are made empty (unnamed) here. Its
    cache of statements may stay on, as asyncpg parses a cached unnamed
    statement again each time. Given in the URL, the value also becomes the
    int asyncpg wants.
    """
    connect_args = dict(kwargs.get("connect_args") or {})
    if "statement_cache_size" in url.query:
        value = url.query["statement_cache_size"]
        connect_args.setdefault("statement_cache_size", _count(value, "statement_cache_size", url))
        url = url.difference_update_query(["statement_cache_size"])
        kwargs["connect_args"] = connect_args
    if connect_args.get("statement_cache_size") == 0:
        connect_args.setdefault("prepared_statement_name_func", _unnamed_statement)
        kwargs["connect_args"] = connect_args
    return url, kwargs


def _psycopg_prepare(url: URL, kwargs: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """psycopg's ``prepare_threshold`` from the URL (``none``: never prepare, for a pooler)."""
    if "prepare_threshold" not in url.query:
        return url, kwargs
    value = url.query["prepare_threshold"]
    threshold: int | None
    if isinstance(value, str) and value.lower() == "none":
        threshold = None
    else:
        threshold = _count(value, "prepare_threshold", url)
    connect_args = {"prepare_threshold": threshold, **(kwargs.get("connect_args") or {})}
    kwargs["connect_args"] = connect_args
    return url.difference_update_query(["prepare_threshold"]), kwargs


def _seconds(value: str, url: URL) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise UrlError(f"connect_timeout={value}: give seconds, e.g. 10 ({shown(url)})")
    return seconds


_MYSQL_TLS = ("ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_check_hostname")


def _mysql_tls(url: URL, kwargs: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    given = {key: url.query[key] for key in _MYSQL_TLS if key in url.query}
    if not given:
        return url, kwargs
    values = {key: value for key, value in given.items() if isinstance(value, str)}
    if len(values) != len(given):
        raise UrlError(f"a TLS parameter is given more than once in {shown(url)}")
    try:
        context = ssl.create_default_context(
            cafile=values.get("ssl_ca"), capath=values.get("ssl_capath")
        )
        if "ssl_cert" in values:
            context.load_cert_chain(values["ssl_cert"], values.get("ssl_key"))
    except (OSError, ssl.SSLError) as exc:
        raise UrlError(f"cannot load the TLS files of {shown(url)}: {exc}") from None
    check = values.get("ssl_check_hostname", "true").lower()
    if check not in ("true", "false", "1", "0"):
        raise UrlError(f"ssl_check_hostname={check}: use true or false")
    context.check_hostname = check in ("true", "1")
    kwargs["connect_args"] = {"ssl": context, **(kwargs.get("connect_args") or {})}
    return url.difference_update_query(list(given)), kwargs


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite-file URL, None for other URLs and in-memory SQLite."""
    parsed = normalize(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        if "mode=memory" in database:
            return None
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


def same_database(first: str, second: str) -> bool:
    """True when two URLs name the same database (same file, or same server and name)."""
    a, b = normalize(first), normalize(second)
    path_a, path_b = sqlite_path(first), sqlite_path(second)
    if path_a is not None and path_b is not None:
        try:
            return os.path.samefile(path_a, path_b)
        except OSError:
            return os.path.abspath(path_a) == os.path.abspath(path_b)
    if a.get_backend_name() != b.get_backend_name() or path_a or path_b:
        return False
    if a.get_backend_name() == "sqlite":  # both in memory: two separate databases
        return False

    def place(url: object) -> tuple[str, int | None, str | None]:
        host = (getattr(url, "host", None) or "localhost").lower()
        host = "127.0.0.1" if host in ("localhost", "::1") else host
        return host, getattr(url, "port", None), getattr(url, "database", None)

    return place(a) == place(b)
