"""A real HA PostgreSQL on loopback: three PostgreSQL 15 nodes under Patroni, etcd as the DCS.

Everything comes from Debian's packages (`patroni` 3.0, `etcd-server` 3.4,
PostgreSQL 15 under /usr/lib/postgresql/15), installed by
deploy/install-test-tools.sh. The cluster lives in a temp directory owned by
the `postgres` user (PostgreSQL refuses to run as root: as root, every process
is started through `runuser -u postgres --`), with its sockets there too, on
ports that collide with nothing else here:

    PostgreSQL      25431-25433  (the nodes' own listeners)
    PostgreSQL      25441-25443  (each node's TCP proxy: what the ledger and the replicas dial)
    Patroni REST    28011-28013
    etcd            23791 (client), 23801 (peer); 23811-23813 (each node's proxy to it)

The per-node proxies (tests/faults/proxy.py) make a network partition possible
without root-only tools: blackholing a node's two proxies cuts it from the
ledger, from its replicas and from etcd at once, while its processes run on.

The DCS client is Patroni's etcd v2 one by default (see `PatroniCluster.dcs`:
Debian's Patroni 3.0.2 loses acknowledged commits with etcd3 after a hang).

Patroni settings that matter (see `_patroni_config`): synchronous_mode and
synchronous_mode_strict (a commit is acknowledged only once a standby has it),
synchronous_node_count 2 with synchronous_commit = remote_apply (every
acknowledged commit is visible on both standbys: the read endpoint's
precondition), primary_start_timeout 0 (a crashed primary fails over instead of
being restarted in place), ttl 20 s and loop_wait 1 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.faults.proxy import TcpProxy

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PORTS = (25431, 25432, 25433)
PROXY_PORTS = (25441, 25442, 25443)
REST_PORTS = (28011, 28012, 28013)
ETCD_CLIENT_PORT = 23791
ETCD_PEER_PORT = 23801
ETCD_PROXY_PORTS = (23811, 23812, 23813)
SYSTEM_USER = "postgres"
SCOPE = "creditledger-failover"
DATABASE = "ledger"


def missing_tools() -> str:
    """Why the cluster cannot run here ('' when it can)."""
    for tool in ("patroni", "etcd"):
        if shutil.which(tool) is None:
            return (
                f"{tool} not installed (deploy/install-test-tools.sh installs it with apt as root)"
            )
    if not (PG_BIN / "postgres").exists():
        return (
            f"PostgreSQL 15 binaries not found in {PG_BIN} (Debian's postgresql-15;"
            " not installed by the test tools, since its package starts a cluster on 5432)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root and there is no `{SYSTEM_USER}` user to run PostgreSQL as"
    busy = [p for p in (*PG_PORTS, *PROXY_PORTS, *REST_PORTS, ETCD_CLIENT_PORT, ETCD_PEER_PORT)]
    taken = [p for p in busy if _listening(p)]
    if taken:
        return f"loopback ports already in use: {taken} (another failover run?)"
    return ""


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> list[int]:
    """Every process under `pid` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _as_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *argv] if os.geteuid() == 0 else argv


def _http(
    method: str, port: int, path: str, body: dict[str, Any] | None = None, timeout_s: float = 1.0
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    except (OSError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Node:
    index: int
    root: Path
    pg_port: int
    proxy_port: int
    rest_port: int
    etcd_proxy_port: int
    proc: subprocess.Popen[bytes] | None = None
    pg_proxy: TcpProxy | None = None
    etcd_proxy: TcpProxy | None = None

    @property
    def name(self) -> str:
        return f"node{self.index + 1}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "patroni.log"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def postgres_processes(self) -> list[int]:
        """The postmaster and its children (backends, walsender, checkpointer...)."""
        pid = self.postmaster_pid()
        if pid is None or not Path(f"/proc/{pid}").exists():
            return []
        return [pid, *_descendants(pid)]

    def role(self) -> str:
        """'primary', 'replica' or 'down' as this node's Patroni REST API says."""
        status, body = _http("GET", self.rest_port, "/patroni", timeout_s=0.5)
        if status == 0 or not isinstance(body, dict):
            return "down"
        if body.get("state") != "running":
            return "down"
        return "primary" if body.get("role") in ("master", "primary") else "replica"


@dataclass
class PatroniCluster:
    """Three Patroni nodes and one etcd in a temp dir; `start()`, faults, `destroy()`."""

    # "etcd" (Patroni's etcd v2 client: the leader key is renewed with a
    # compare-and-swap on its value) or "etcd3". Patroni 3.0.2's etcd3 client
    # (Debian 12's) re-creates the leader key unconditionally when its lease has
    # expired (fixed in 3.0.3 by patroni/patroni#2689): a primary that hung past
    # the ttl takes the key back from its successor when it wakes, and the
    # successor's acknowledged commits are rewound away. `make failover` found
    # that (docs/operations.md); "etcd3" is kept to show it.
    dcs: str = "etcd"
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="creditledger-ha-")))
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        for i in range(3):
            self.nodes.append(
                Node(
                    i,
                    self.root / f"node{i + 1}",
                    PG_PORTS[i],
                    PROXY_PORTS[i],
                    REST_PORTS[i],
                    ETCD_PROXY_PORTS[i],
                )
            )

    # ---- URLs -----------------------------------------------------------------

    def ledger_url(self, attrs: str = "read-write") -> str:
        """What the ledger is given: every node (through its proxy), in node order."""
        hosts = ",".join(f"127.0.0.1:{n.proxy_port}" for n in self.nodes)
        return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs={attrs}"

    def node_url(self, node: Node, database: str = DATABASE) -> str:
        """One node directly (not through its proxy)."""
        return f"postgresql://postgres@127.0.0.1:{node.pg_port}/{database}"

    # ---- lifecycle ------------------------------------------------------------

    def start(self, timeout_s: float = 90.0) -> None:
        os.chmod(self.root, 0o755)
        self._start_proxies()
        self._start_etcd()
        for node in self.nodes:
            node.root.mkdir(parents=True)
            node.config_path.write_text(yaml.safe_dump(self._patroni_config(node)))
            self._chown(node.root)
        # The first node bootstraps alone; the others then clone it.
        self.start_node(self.nodes[0])
        self.wait_for(lambda: self.nodes[0].role() == "primary", timeout_s, "node1 primary")
        for node in self.nodes[1:]:
            self.start_node(node)
        self.wait_healthy(timeout_s)

    def _chown(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam(SYSTEM_USER)
        for p in [path, *path.rglob("*")]:
            os.chown(p, user.pw_uid, user.pw_gid)

    def _start_proxies(self) -> None:
        for node in self.nodes:
            node.pg_proxy = TcpProxy("127.0.0.1", node.pg_port, listen_port=node.proxy_port)
            node.pg_proxy.start()
            node.etcd_proxy = TcpProxy(
                "127.0.0.1", ETCD_CLIENT_PORT, listen_port=node.etcd_proxy_port
            )
            node.etcd_proxy.start()

    def _start_etcd(self) -> None:
        data = self.root / "etcd"
        data.mkdir()
        self._chown(data)
        os.chmod(data, 0o700)
        client = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        log = (self.root / "etcd.log").open("wb")
        self.etcd = subprocess.Popen(
            _as_user(
                [
                    "etcd",
                    "--name=etcd0",
                    f"--data-dir={data}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=etcd0={peer}",
                    "--initial-cluster-state=new",
                    "--enable-v2=true",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_for(
            lambda: _http("GET", ETCD_CLIENT_PORT, "/health")[0] == 200, 30, "etcd healthy"
        )

    def _patroni_config(self, node: Node) -> dict[str, Any]:
        return {
            "scope": SCOPE,
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.rest_port}",
                "connect_address": f"127.0.0.1:{node.rest_port}",
            },
            # Through the node's own proxy, so that a partition cuts the DCS too.
            # use_proxies: no discovery of etcd's own (advertised) address, which
            # would go around the proxy.
            self.dcs: {"hosts": [f"127.0.0.1:{node.etcd_proxy_port}"], "use_proxies": True},
            "bootstrap": {
                "dcs": {
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    "primary_start_timeout": 0,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": True,
                    "synchronous_node_count": 2,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "synchronous_commit": "remote_apply",
                            "wal_log_hints": "on",
                            "max_connections": 100,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                            "hot_standby": "on",
                            # Reads on the standbys: fewer queries cancelled by recovery conflicts.
                            "hot_standby_feedback": "on",
                            "autovacuum": "off",
                            "fsync": "off",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.proxy_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(node.root / "pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(node.root)},
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 trust",
                    "host all all 127.0.0.1/32 trust",
                ],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    def start_node(self, node: Node) -> None:
        log = node.log_path.open("ab")
        node.proc = subprocess.Popen(
            _as_user(["patroni", str(node.config_path)]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=node.root,
        )

    def destroy(self) -> None:
        for node in self.nodes:
            self._stop_process(node.proc)
            procs = node.postgres_processes()
            _signal(procs, signal.SIGCONT)
            _signal(procs, signal.SIGKILL)
        self._stop_process(self.etcd)
        for node in self.nodes:
            for proxy in (node.pg_proxy, node.etcd_proxy):
                if proxy is not None:
                    proxy.close()
        if os.environ.get("FAILOVER_KEEP_DIR") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    # ---- state ----------------------------------------------------------------

    @staticmethod
    def wait_for(check: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def primary(self) -> Node | None:
        found = [n for n in self.nodes if n.role() == "primary"]
        return found[0] if len(found) == 1 else None

    def members(self) -> list[dict[str, Any]]:
        for node in self.nodes:
            status, body = _http("GET", node.rest_port, "/cluster", timeout_s=0.5)
            if status == 200 and isinstance(body, dict):
                members: list[dict[str, Any]] = body.get("members", [])
                return members
        return []

    def healthy(self) -> bool:
        """One leader, two synchronous standbys streaming with no lag."""
        members = self.members()
        if len(members) != 3:
            return False
        leaders = [m for m in members if m.get("role") in ("leader", "master", "primary")]
        syncs = [
            m
            for m in members
            if m.get("role") == "sync_standby"
            and m.get("state") in ("running", "streaming")
            and not m.get("lag")
        ]
        return len(leaders) == 1 and leaders[0].get("state") == "running" and len(syncs) == 2

    def wait_healthy(self, timeout_s: float = 90.0) -> None:
        try:
            self.wait_for(self.healthy, timeout_s, "one leader and two synchronous standbys")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; members: {self.members()}") from None

    # ---- faults ---------------------------------------------------------------

    def kill_postmaster(self, node: Node) -> None:
        pid = node.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"{node.name}: no postmaster.pid")
        os.kill(pid, signal.SIGKILL)

    def kill_node(self, node: Node) -> None:
        """Patroni and every PostgreSQL process of the node at once, as when its host dies."""
        procs = node.postgres_processes()
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)
        _signal(procs, signal.SIGKILL)

    def freeze(self, node: Node, sig: signal.Signals) -> None:
        """SIGSTOP (hang) or SIGCONT (thaw) Patroni, the postmaster and every backend."""
        pids = node.postgres_processes()
        if node.proc is not None:
            pids += [node.proc.pid, *_descendants(node.proc.pid)]
        _signal(sorted(set(pids)), sig)

    def partition(self, node: Node, cut: bool) -> None:
        """Blackhole (or restore) everything that reaches the node or leaves it for etcd."""
        for proxy in (node.pg_proxy, node.etcd_proxy):
            if proxy is None:
                continue
            if cut:
                proxy.cut("blackhole")
            else:
                proxy.restore()

    def switchover(self, leader: Node, candidate: Node) -> None:
        status, body = _http(
            "POST",
            leader.rest_port,
            "/switchover",
            {"leader": leader.name, "candidate": candidate.name},
            timeout_s=30.0,
        )
        if status != 200:
            raise RuntimeError(f"switchover refused: {status} {body}")
