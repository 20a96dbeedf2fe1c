"""A private 3-node MariaDB Galera cluster on loopback, for tests and benchmarks.

Each node is its own ``mariadbd`` (Debian's ``mariadb-server`` with
``galera-4``) in a temporary directory: data, socket, pid file and error log
of its own, client port ``44300 + n``, group communication on ``45300 + n``,
incremental state transfer on ``45310 + n`` and rsync state transfer on
``45320 + n``. Node 1 bootstraps the cluster (``--wsrep-new-cluster``); the
others join it by a full state transfer (rsync). Nothing here touches the
shared server on port 3306.

Everything is bounded in time: a node that is not synced within
``START_TIMEOUT_S`` fails the start, and every process started is stopped by
its pid (``stop()``, also registered with ``atexit``).

Use from Python::

    cluster = GaleraCluster()
    cluster.start()            # 3 nodes, synced
    cluster.url(2)             # mysql+aiomysql://root@127.0.0.1:44302/test
    cluster.kill(3); cluster.restart(3)
    cluster.stop()

or from a shell: ``python cluster/galera.py up`` starts one and waits for
Ctrl-C (printing the URLs), ``python cluster/galera.py check`` starts,
verifies and stops one.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "mariadb-install-db"
# Debian's galera-4 installs the provider here (dpkg -L galera-4).
PROVIDER_CANDIDATES = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so")
CLIENT_PORT_BASE = 44300
GCOMM_PORT_BASE = 45300
IST_PORT_BASE = 45310
SST_PORT_BASE = 45320
#: Seconds one node may take to start and sync (a joiner includes its state transfer).
START_TIMEOUT_S = 90.0
#: Seconds a node may take to stop on SIGTERM before it gets SIGKILL.
STOP_TIMEOUT_S = 30.0
DATABASE = "test"
#: Set to keep the data directories and logs after stop() (debugging).
KEEP_ENV = "LATTICE_GALERA_KEEP"

# Group communication timeouts shortened from Galera's defaults (suspect 5 s,
# inactive 15 s) so that a killed node is evicted within ~3 s on loopback.
PROVIDER_OPTIONS = (
    "evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;evs.inactive_timeout=PT3S;"
    "evs.inactive_check_period=PT0.5S;evs.install_timeout=PT3S;gcache.size=128M;"
    "gcs.fc_limit=64"
)


def _server_user() -> str | None:
    """The user mariadbd runs as when we are root: Debian's ``mysql``, else root itself.

    Not root where avoidable: the joiner's rsync daemon, started by mariadbd,
    switches to ``nobody`` when it runs as root, and then cannot write the
    data directory (rsync error 3, "Permission denied").
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return "root"
    return "mysql"


RUN_AS = _server_user()


def _give_to_server_user(path: Path) -> None:
    if RUN_AS is None or RUN_AS == "root":
        return
    entry = pwd.getpwnam(RUN_AS)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def provider_path() -> str:
    """The Galera provider library installed on this machine."""
    for candidate in PROVIDER_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise RuntimeError(
        "libgalera_smm.so not found: install Debian's galera-4 (apt-get install galera-4)"
    )


def missing_tools() -> list[str]:
    """What this machine lacks to run a cluster (empty when everything is there)."""
    missing = [tool for tool in (INSTALL_DB, "rsync", "wsrep_sst_rsync") if not shutil.which(tool)]
    if not Path(MARIADBD).is_file():
        missing.append(MARIADBD)
    if not any(Path(p).is_file() for p in PROVIDER_CANDIDATES):
        missing.append("galera-4 (libgalera_smm.so)")
    return missing


@dataclass
class Node:
    """One mariadbd of the cluster."""

    number: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return CLIENT_PORT_BASE + self.number

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.base / "error.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A plain pymysql connection to this node (TCP, root)."""
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", connect_timeout=3, **kwargs
        )

    def status(self, name: str) -> str | None:
        """``SHOW STATUS`` value of ``name`` on this node, None if it cannot be asked."""
        try:
            conn = self.connect()
        except pymysql.MySQLError:
            return None
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW STATUS LIKE %s", (name,))
                row = cursor.fetchone()
                return None if row is None else str(row[1])
        except pymysql.MySQLError:
            return None
        finally:
            conn.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"


@dataclass
class GaleraCluster:
    """A private Galera cluster of ``size`` nodes; ``start()`` then ``stop()``."""

    size: int = 3
    base: Path | None = None
    nodes: list[Node] = field(default_factory=list)
    _owns_base: bool = False

    def url(self, number: int, driver: str = "aiomysql") -> str:
        """The SQLAlchemy URL of node ``number`` (1-based)."""
        return f"mysql+{driver}://root@127.0.0.1:{CLIENT_PORT_BASE + number}/{DATABASE}"

    def node(self, number: int) -> Node:
        return self.nodes[number - 1]

    def _ports(self) -> list[int]:
        return [
            base + n
            for n in range(1, self.size + 1)
            for base in (CLIENT_PORT_BASE, GCOMM_PORT_BASE, IST_PORT_BASE, SST_PORT_BASE)
        ]

    def _cluster_address(self) -> str:
        peers = ",".join(f"127.0.0.1:{GCOMM_PORT_BASE + n}" for n in range(1, self.size + 1))
        return f"gcomm://{peers}"

    def _command(self, node: Node, *, bootstrap: bool) -> list[str]:
        n = node.number
        options = (
            f"gmcast.listen_addr=tcp://127.0.0.1:{GCOMM_PORT_BASE + n};"
            f"ist.recv_addr=127.0.0.1:{IST_PORT_BASE + n};{PROVIDER_OPTIONS}"
        )
        command = [
            MARIADBD,
            "--no-defaults",
            f"--datadir={node.datadir}",
            f"--socket={node.socket}",
            f"--pid-file={node.base / 'mysqld.pid'}",
            f"--log-error={node.error_log}",
            f"--port={node.port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--max-connections=300",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=32M",
            "--performance-schema=OFF",
            # What Galera requires: row-based replication, interleaved
            # auto-increment locks, InnoDB.
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--default-storage-engine=InnoDB",
            "--wsrep-on=ON",
            f"--wsrep-provider={provider_path()}",
            f"--wsrep-cluster-address={self._cluster_address()}",
            "--wsrep-cluster-name=lattice-test",
            f"--wsrep-node-name=node{n}",
            "--wsrep-node-address=127.0.0.1",
            f"--wsrep-sst-receive-address=127.0.0.1:{SST_PORT_BASE + n}",
            "--wsrep-sst-method=rsync",
            "--wsrep-slave-threads=2",
            f"--wsrep-provider-options={options}",
        ]
        if RUN_AS is not None:
            command.append(f"--user={RUN_AS}")
        if bootstrap:
            command.append("--wsrep-new-cluster")
        return command

    def _install(self, template: Path) -> None:
        result = subprocess.run(
            [
                INSTALL_DB,
                "--no-defaults",
                f"--datadir={template}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *([f"--user={RUN_AS}"] if RUN_AS is not None else []),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db failed: {result.stderr.decode(errors='replace')[-2000:]}"
            )

    def start(self) -> GaleraCluster:
        """Install data directories, bootstrap node 1, join the rest; wait until all synced."""
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"cannot start a Galera cluster, missing: {', '.join(missing)}")
        busy = [port for port in self._ports() if _port_in_use(port)]
        if busy:
            raise RuntimeError(
                f"cannot start a Galera cluster: ports {busy} are in use (another cluster?)"
            )
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="lattice-galera-"))
            self._owns_base = True
            # mariadbd runs as the mysql user (RUN_AS): let it reach its directory.
            self.base.chmod(0o755)
        atexit.register(self.stop)
        template = self.base / "template"
        self._install(template)
        self.nodes = [Node(n, self.base / f"node{n}") for n in range(1, self.size + 1)]
        try:
            for node in self.nodes:
                node.base.mkdir(parents=True)
                # A joiner's data directory is replaced by its state transfer;
                # it only needs to be one mariadbd can open.
                shutil.copytree(template, node.datadir)
                _give_to_server_user(node.base)
            self._launch(self.nodes[0], bootstrap=True)
            self._wait_synced(self.nodes[0], cluster_size=1)
            with self.nodes[0].connect(autocommit=True) as conn, conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            for node in self.nodes[1:]:
                self._launch(node, bootstrap=False)
                self._wait_synced(node, cluster_size=node.number)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, node: Node, *, bootstrap: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            (node.base / "mysqld.sock").unlink()
        node.process = subprocess.Popen(
            self._command(node, bootstrap=bootstrap),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_synced(
        self, node: Node, *, cluster_size: int | None = None, timeout: float = START_TIMEOUT_S
    ) -> None:
        """Wait until ``node`` is ready, synced, and sees ``cluster_size`` members."""
        deadline = time.monotonic() + timeout
        want = cluster_size if cluster_size is not None else self.size
        while time.monotonic() < deadline:
            if not node.running():
                raise RuntimeError(
                    f"Galera node {node.number} exited while starting:\n{node.log_tail()}"
                    f"\n-- node 1:\n{self.nodes[0].log_tail(15)}"
                )
            if (
                node.status("wsrep_ready") == "ON"
                and node.status("wsrep_local_state_comment") == "Synced"
                and node.status("wsrep_cluster_size") == str(want)
            ):
                return
            time.sleep(0.25)
        raise RuntimeError(
            f"Galera node {node.number} not synced in {timeout:.0f} s:\n{node.log_tail()}"
        )

    def wait_size(self, size: int, timeout: float = 30.0) -> None:
        """Wait until every running node is synced in a cluster of ``size`` members."""
        for node in self.nodes:
            if node.running():
                self._wait_synced(node, cluster_size=size, timeout=timeout)

    def kill(self, number: int) -> None:
        """SIGKILL node ``number`` (a crash: no shutdown, no goodbye to the group)."""
        node = self.node(number)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, number: int) -> None:
        """Start a stopped node again; it rejoins (IST or SST) and syncs."""
        node = self.node(number)
        assert not node.running()
        self._launch(node, bootstrap=False)
        self._wait_synced(node, cluster_size=sum(n.running() for n in self.nodes))

    def stop(self) -> None:
        """Stop every node by its pid (SIGTERM, then SIGKILL), remove the directory."""
        for node in reversed(self.nodes):
            process = node.process
            if process is None or process.poll() is not None:
                continue
            process.terminate()
        for node in self.nodes:
            process = node.process
            if process is None:
                continue
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        # rsync daemons of a state transfer interrupted by the stop.
        for node in self.nodes:
            for pid_file in node.base.glob("**/rsync_sst.pid") if node.base.exists() else ():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        if self._owns_base and self.base is not None and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)


def _check() -> None:
    started = time.monotonic()
    cluster = GaleraCluster().start()
    try:
        print(f"galera: 3 nodes synced in {time.monotonic() - started:.1f} s")
        for node in cluster.nodes:
            print(f"  node {node.number}: {cluster.url(node.number)}")
    finally:
        cluster.stop()


def _up() -> None:
    # Blocked, so that sigwait receives them and the finally below runs.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    cluster = GaleraCluster().start()
    try:
        for node in cluster.nodes:
            print(cluster.url(node.number), flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()


if __name__ == "__main__":
    {"check": _check, "up": _up}[sys.argv[1] if len(sys.argv) > 1 else "check"]()
