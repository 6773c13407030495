"""A private PostgreSQL cluster the harness owns, so it can stop and start it at will.

The torture run must restart PostgreSQL with `pg_ctl -m fast` and `-m immediate`,
which a shared server cannot allow. The binaries come from the `pgserver` package
(the same ones `ledger serve` embeds); the cluster lives in a temp dir and
listens on a loopback TCP port, like a real remote database would.

PostgreSQL refuses to run as root. As root we do what pgserver itself does: run
initdb, pg_ctl and postgres as the unprivileged system user `pgserver` (created
with useradd when missing) and make the data dir theirs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

SYSTEM_USER = "pgserver"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60

ShutdownMode = Literal["smart", "fast", "immediate"]


def pg_bin_dir() -> Path:
    """The bin/ of the PostgreSQL that the pgserver package ships.

    Found without importing pgserver, whose import starts platformdirs machinery.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("the pgserver package is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", SYSTEM_USER], check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _open_traversal(path: Path) -> None:
    """Let another user reach `path`: o+x on every parent (what pgserver does too)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o055 != 0o055:
            parent.chmod(mode | 0o055)


class PgCluster:
    """One PostgreSQL cluster in `base_dir`, on 127.0.0.1:`port`.

    `init()` once, then `start()` / `stop(mode)` as often as a test likes.
    """

    def __init__(self, base_dir: Path | None = None, port: int | None = None) -> None:
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="creditledger-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        self.port = port or free_port()
        self._user: str | None = SYSTEM_USER if _running_as_root() else None

    @property
    def url(self) -> str:
        """The URL of the `postgres` database (superuser, trust auth)."""
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], timeout: float) -> None:
        # Output goes to files, never pipes: pg_ctl's postmaster inherits them and a
        # pipe would keep subprocess.run waiting for EOF (pgserver notes the same).
        # As root, switch user with runuser rather than subprocess's user=: user=
        # forces a plain fork(), whose gRPC atfork handlers can crash the child in
        # this multi-threaded process (pg_ctl then "fails" with -11, SIGSEGV).
        # Without user=, Python spawns with vfork and no atfork handler runs.
        user: str | None = None
        if self._user is not None:
            if shutil.which("runuser"):
                args = ["runuser", "-u", self._user, "--", *args]
            else:
                user = self._user
        with tempfile.TemporaryFile() as out:
            proc = subprocess.run(
                args, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, user=user
            )
            if proc.returncode != 0:
                out.seek(0)
                text = out.read().decode(errors="replace")
                raise RuntimeError(
                    f"{args[0]} failed ({proc.returncode}): {text}\n{self._log_tail()}"
                )

    def _log_tail(self) -> str:
        try:
            return "postgres log tail:\n" + "\n".join(self.log_path.read_text().splitlines()[-20:])
        except OSError:
            return ""

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._user is not None:
            entry = _ensure_system_user()
            _open_traversal(self.base_dir)
            _open_traversal(pg_bin_dir())
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        initdb = str(pg_bin_dir() / "initdb")
        self._run(
            [initdb, "-D", str(self.data_dir), "--auth=trust", "-U", "postgres", "-E", "utf8"],
            timeout=120,
        )

    def start(self) -> None:
        # fsync=off: a process crash (the faults here) loses nothing that was
        # committed, since the WAL is in the OS page cache; only an OS crash would.
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir} -c max_connections=300 "
            "-c fsync=off -c full_page_writes=off -c shared_buffers=64MB"
        )
        pg_ctl = str(pg_bin_dir() / "pg_ctl")
        self._run(
            [pg_ctl, "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT_S), "-l",
             str(self.log_path), "-o", options, "start"],
            timeout=START_TIMEOUT_S + 10,
        )  # fmt: skip
        self.wait_ready()

    def stop(self, mode: ShutdownMode = "fast") -> None:
        pg_ctl = str(pg_bin_dir() / "pg_ctl")
        self._run(
            [pg_ctl, "-D", str(self.data_dir), "-w", "-t", str(STOP_TIMEOUT_S), "-m", mode, "stop"],
            timeout=STOP_TIMEOUT_S + 10,
        )

    def is_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, OSError):
            return False
        return True

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until a TCP connection to the port succeeds (pg_ctl -w already waited for ready)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres on port {self.port} not ready\n{self._log_tail()}")
            time.sleep(0.1)

    def destroy(self) -> None:
        """Stop (immediately) and delete everything."""
        if self.is_running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` (keeps the query, e.g. a unix-socket host)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(admin_url: str, prefix: str) -> str:
    """A fresh, empty database next to `admin_url`'s; returns its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, database_url: str) -> None:
    """Drop a database made by create_database, cutting its sessions first."""
    name = urlsplit(database_url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


@contextlib.contextmanager
def private_cluster() -> Iterator[PgCluster]:
    """A started PgCluster, destroyed on exit."""
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
