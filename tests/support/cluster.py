"""A PostgreSQL cluster a test owns, so that it may restart it (the shared test
server belongs to everyone on the machine): initdb + pg_ctl in a temporary
directory. As root it runs them as `postgres` through runuser (PostgreSQL
refuses to run as root), as tests/bench/soak.py `own_cluster` does; as any
other user it runs them directly. Binaries: the system's (/usr/lib/postgresql/*/bin)
or else the embedded pgserver's. `unavailable()` says why a test cannot own one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "64MB",
    "max_connections": "100",
    "fsync": "on",  # a restart must keep what was committed: the point of the test
}


def _bin_dir() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    try:
        from pgserver import _commands  # the embedded fallback's own build

        d = Path(_commands.POSTGRES_BIN_PATH)
        if (d / "initdb").exists():
            return d
    except Exception:  # any failure only means "not available"
        return None
    return None


def unavailable() -> str:
    """Why this process cannot own a cluster; empty when it can."""
    if _bin_dir() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin or pgserver)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot run initdb as `postgres`"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnCluster:
    """start() / restart() / stop(); `url` is its postgres database."""

    def __init__(self) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.bin_dir = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="creditledger-own-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(Path(str(self.bin_dir)) / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", *args)

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\n")
            conf.write(f"unix_socket_directories = '{self.root}'\n")
            for k, v in SETTINGS.items():
                conf.write(f"{k} = {v}\n")
        self._ctl("start")

    def restart(self, mode: str = "fast") -> None:
        """pg_ctl restart: `fast` rolls back open transactions and disconnects
        everyone; `immediate` is a crash (recovery from the WAL at start)."""
        self._ctl("-m", mode, "restart")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.root / "pg.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
