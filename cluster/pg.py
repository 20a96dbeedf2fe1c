"""Private PostgreSQL 15 clusters on loopback, for the cluster tests and benchmarks.

A :class:`PgCluster` is a primary and (optionally) a streaming hot standby
made with ``pg_basebackup -R``, each a postmaster of its own with its data
directory, socket directory and log under one temporary directory, and
(optionally) Debian's ``pgbouncer`` in transaction pool mode in front of the
primary, run as a private process with its own ini file. With
``synchronous=True`` the primary lists the standby in
``synchronous_standby_names``, so a commit is acknowledged only once the
standby has flushed it. Nothing here touches the shared server on 5432.

Everything is bounded in time (``START_TIMEOUT_S``, ``STOP_TIMEOUT_S``), and
every process started is stopped by its pid: :meth:`PgCluster.stop`, which
is also registered with ``atexit`` should the caller forget or raise. What a
run killed outright (SIGKILL) left on the same ports is stopped by the next
:meth:`PgCluster.start` (through its data directories and pid files).

When this runs as root (CI), the servers run as Debian's ``postgres`` user:
``initdb`` and ``pgbouncer`` refuse to run as root. The database superuser
is ``root`` (trust authentication on loopback), with a database ``test``.

From a shell::

    python cluster/pg.py up      # start a cluster, print its URLs, wait for Ctrl-C
    python cluster/pg.py check   # start one, check replication and PgBouncer, stop it
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
#: Seconds a server (or PgBouncer) may take to start or to be promoted.
START_TIMEOUT_S = 30
#: Seconds a server may take to stop before it gets SIGKILL.
STOP_TIMEOUT_S = 20
#: Seconds any one helper command (initdb, pg_basebackup, psql) may take.
COMMAND_TIMEOUT_S = 60
USER = "root"
DATABASE = "test"
STANDBY_NAME = "standby1"
#: Set to keep the data directories and logs after stop() (debugging).
KEEP_ENV = "LATTICE_PG_CLUSTER_KEEP"


def _server_user() -> pwd.struct_passwd | None:
    """Debian's ``postgres`` user when we are root (initdb refuses root), else None."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


RUN_AS = _server_user()


def pgbouncer_path() -> str | None:
    """The PgBouncer binary of this machine, or None (``apt-get install -y pgbouncer``)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((p for p in PGBOUNCER_CANDIDATES if Path(p).is_file()), None)


def missing_tools(*, pgbouncer: bool = True) -> list[str]:
    """What this machine lacks to run a cluster (empty when everything is there)."""
    tools = ["initdb", "pg_ctl", "pg_basebackup", "postgres"]
    missing = [str(PG_BIN / t) for t in tools if not (PG_BIN / t).is_file()]
    if pgbouncer and pgbouncer_path() is None:
        missing.append("pgbouncer (apt-get install -y pgbouncer)")
    return missing


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not port_in_use(port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
        time.sleep(0.05)


def _give_to_server_user(path: Path) -> None:
    if RUN_AS is not None:
        os.chown(path, RUN_AS.pw_uid, RUN_AS.pw_gid)


def _run(args: list[str], *, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command as the server user, bounded in time; its output, or an error holding it."""
    extra = {} if RUN_AS is None else {"user": RUN_AS.pw_uid, "group": RUN_AS.pw_gid}
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
            extra_groups=[] if RUN_AS is not None else None,
            **extra,  # type: ignore[arg-type]
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"{args[0]} did not finish within {timeout} s") from exc
    if done.returncode != 0:
        output = done.stdout + done.stderr
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {output}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM ``pid``, then SIGKILL if it is still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class PgNode:
    """One postmaster: its port, data directory and settings given on its command line."""

    name: str
    port: int
    root: Path
    settings: dict[str, str]
    pid: int | None = None

    @property
    def data(self) -> Path:
        return self.root / self.name

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def url(self, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _options(self) -> str:
        settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            **self.settings,
        }
        return " ".join(f"-c {key}={value}" for key, value in settings.items())

    def start(self) -> None:
        """Start the postmaster and wait (bounded) until it accepts connections."""
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} is already in use: another cluster is running")
        _run(
            [
                str(PG_BIN / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S),
                "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
            ],
            timeout=START_TIMEOUT_S + 10,
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``mode``: fast, or immediate for a crash), SIGKILL if that hangs."""
        if self.pid is None or not _pid_alive(self.pid):
            self.pid = None
            return
        try:
            _run(
                [str(PG_BIN / "pg_ctl"), "stop", "-w", "-t", str(STOP_TIMEOUT_S),
                 "-D", str(self.data), "-m", mode],
                timeout=STOP_TIMEOUT_S + 10,
            )
        except (RuntimeError, TimeoutError):
            pass
        if _pid_alive(self.pid):
            _kill_pid(self.pid, timeout=1)
        self.pid = None

    def promote(self) -> None:
        """Promote a standby to primary, waiting (bounded) until it accepts writes."""
        _run(
            [str(PG_BIN / "pg_ctl"), "promote", "-w", "-t", str(START_TIMEOUT_S),
             "-D", str(self.data)],
            timeout=START_TIMEOUT_S + 10,
        )

    def sql(self, query: str, database: str = DATABASE) -> str:
        """Run ``query`` with psql on this node; its unaligned output."""
        return _run(
            [str(PG_BIN / "psql"), "-X", "-qAt", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", USER, "-d", database, "-c", query]
        ).strip()


class PgCluster:
    """A primary, an optional synchronous hot standby, an optional PgBouncer.

    Ports: the primary on ``base_port``, the standby on ``base_port + 1``,
    PgBouncer on ``base_port + 2``.
    """

    def __init__(
        self,
        base_port: int,
        *,
        standby: bool = True,
        synchronous: bool = True,
        pgbouncer: bool = True,
        fsync: bool = False,
    ) -> None:
        self.base_port = base_port
        self.root = Path(tempfile.mkdtemp(prefix=f"lattice-pg-{base_port}-"))
        self.root.chmod(0o755)
        _give_to_server_user(self.root)
        common = {
            "fsync": "on" if fsync else "off",
            "shared_buffers": "32MB",
            "max_connections": "100",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            "log_min_messages": "warning",
        }
        self.synchronous = standby and synchronous
        self.primary = PgNode("primary", base_port, self.root, dict(common))
        self.standby = (
            PgNode("standby", base_port + 1, self.root, dict(common)) if standby else None
        )
        self.bouncer_port = base_port + 2
        self._bouncer: subprocess.Popen[bytes] | None = None
        self._want_bouncer = pgbouncer
        self._stopped = False
        atexit.register(self.stop)

    # -- URLs ------------------------------------------------------------------------

    def primary_url(self, driver: str = "asyncpg") -> str:
        return self.primary.url(driver)

    def standby_url(self, driver: str = "asyncpg") -> str:
        assert self.standby is not None
        return self.standby.url(driver)

    def bouncer_url(self, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.bouncer_port}/{DATABASE}"

    def failover_url(self, driver: str = "asyncpg") -> str:
        """Both nodes, the writable one chosen at connect time (``target_session_attrs``)."""
        assert self.standby is not None
        return (
            f"postgresql+{driver}://{USER}@/{DATABASE}?host=127.0.0.1:{self.primary.port}"
            f"&host=127.0.0.1:{self.standby.port}&target_session_attrs=read-write"
        )

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> PgCluster:
        """Make and start every node; bounded in time; on failure everything is stopped."""
        try:
            self._reap_stale()
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _reap_stale(self) -> None:
        """Stop what a run killed before it could clean up left on these ports (by its pids)."""
        for old in self.root.parent.glob(f"lattice-pg-{self.base_port}-*"):
            if old == self.root:
                continue
            for name in ("primary", "standby"):
                if (old / name / "postmaster.pid").is_file():
                    # pg_ctl checks that the pid is that data directory's postmaster.
                    with contextlib.suppress(RuntimeError, TimeoutError):
                        _run([str(PG_BIN / "pg_ctl"), "stop", "-w", "-t", str(STOP_TIMEOUT_S),
                              "-D", str(old / name), "-m", "immediate"])
            bouncer = old / "pgbouncer.pid"
            with contextlib.suppress(OSError, ValueError):
                pid = int(bouncer.read_text().split()[0])
                # Only if that pid is still this directory's PgBouncer.
                if str(old / "pgbouncer.ini") in Path(f"/proc/{pid}/cmdline").read_text():
                    _kill_pid(pid, timeout=5)
            shutil.rmtree(old, ignore_errors=True)

    def _start(self) -> None:
        _run([str(PG_BIN / "initdb"), "-D", str(self.primary.data), "-U", USER,
              "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        self.primary.start()
        self.primary.sql(f"CREATE DATABASE {DATABASE}", database="postgres")
        if self.standby is not None:
            _run([
                str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                "-U", USER, "-D", str(self.standby.data), "-R", "-X", "stream",
                "-C", "-S", STANDBY_NAME, "--no-sync", "--checkpoint=fast",
            ])
            # -R wrote primary_conninfo; the application name is what
            # synchronous_standby_names matches.
            with (self.standby.data / "postgresql.auto.conf").open("a") as conf:
                conf.write(
                    f"primary_conninfo = 'host=127.0.0.1 port={self.primary.port} "
                    f"user={USER} application_name={STANDBY_NAME}'\n"
                )
            self.standby.start()
            self.wait_streaming("async")
            if self.synchronous:
                # Set on the primary only once the standby streams: earlier, the
                # commits of the setup would wait for it. The standby's copy of
                # the configuration (taken before) does not have it, so once
                # promoted it does not wait for a standby it does not have.
                self.primary.sql(
                    f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"
                )
                self.primary.sql("SELECT pg_reload_conf()")
                self.wait_streaming("sync")
        if self._want_bouncer:
            self._start_bouncer()

    def wait_streaming(self, want: str, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the primary sees the standby streaming, ``want`` = sync or async."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.primary.sql(
                "SELECT state || ',' || sync_state FROM pg_stat_replication "
                f"WHERE application_name = '{STANDBY_NAME}'"
            )
            if state == f"streaming,{want}":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby is not streaming after {timeout} s ({state!r})")
            time.sleep(0.1)

    def _start_bouncer(self) -> None:
        binary = pgbouncer_path()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed: apt-get install -y pgbouncer")
        if port_in_use(self.bouncer_port):
            raise RuntimeError(f"port {self.bouncer_port} is already in use")
        users = self.root / "userlist.txt"
        users.write_text(f'"{USER}" ""\n')
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{DATABASE} = host=127.0.0.1 port={self.primary.port} dbname={DATABASE}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.bouncer_port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 500\n"
            "default_pool_size = 10\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
            f"admin_users = {USER}\n"
        )
        for path in (users, ini):
            _give_to_server_user(path)
        extra = {} if RUN_AS is None else {"user": RUN_AS.pw_uid, "group": RUN_AS.pw_gid}
        self._bouncer = subprocess.Popen(  # our own ini, in the foreground
            [binary, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            extra_groups=[] if RUN_AS is not None else None,
            **extra,  # type: ignore[arg-type]
        )
        _wait_port(self.bouncer_port, START_TIMEOUT_S, self._bouncer)

    def stop(self) -> None:
        """Stop every process this cluster started, by pid; remove its directory."""
        if self._stopped:
            return
        self._stopped = True
        if self._bouncer is not None:
            _kill_pid(self._bouncer.pid, timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._bouncer.wait(timeout=5)
            self._bouncer = None
        for node in (self.standby, self.primary):
            if node is not None:
                node.stop("immediate")
        if not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)


def _main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "check"
    base = int(argv[2]) if len(argv) > 2 else 55490
    with PgCluster(base) as cluster:
        print("primary:  ", cluster.primary_url())
        print("standby:  ", cluster.standby_url())
        print("pgbouncer:", cluster.bouncer_url())
        print("failover: ", cluster.failover_url())
        if command == "up":
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        else:
            cluster.primary.sql("CREATE TABLE cluster_check (x int)")
            cluster.primary.sql("INSERT INTO cluster_check VALUES (1)")
            assert cluster.standby is not None
            print("standby sees:", cluster.standby.sql("SELECT count(*) FROM cluster_check"))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
