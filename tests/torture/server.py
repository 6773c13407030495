"""A `ledger serve` subprocess the harness can kill, pause, resume and restart.

The harness keeps its own wrapper (rather than tests/support/process.py) because
it needs the raw pid for SIGSTOP/SIGCONT and a restart on the same ports, which
is what a supervisor (systemd, Kubernetes) does after a crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.torture.pg import free_port

READY_TIMEOUT_S = 60


def health_status(target: str, timeout_s: float = 1.0) -> str:
    """SERVING / NOT_SERVING / ... or the gRPC code name when the check fails."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError as err:
            return str(err.code().name)  # type: ignore[attr-defined, unused-ignore]
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _free_ports(count: int) -> int:
    """A port p such that p .. p + count - 1 are all free now."""
    for _ in range(100):
        base = free_port()
        sockets = []
        try:
            for n in range(count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + n))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: every process's parent
        return [child for child in _pids() if _parent(child) == pid]
    return [int(child) for child in text.split()]


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _flag_value(pid: int, flag: str) -> str | None:
    """The last value of `flag` on a process's command line (argparse keeps the last)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]
    return values[-1] if values else None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_verify(
    database_url: str, timeout_s: float = 300, cwd: Path | None = None
) -> tuple[int, str]:
    """`ledger verify`: (exit code, its output). `cwd`: where the `ledger` package is taken from."""
    proc = subprocess.run(
        [sys.executable, "-m", "ledger", "verify", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


class LedgerServer:
    """One `python -m ledger serve` on loopback; same ports across restarts."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        name: str = "server",
        port: int | None = None,
        metrics_port: int | None = None,
        extra_args: list[str] | None = None,
        cwd: Path | None = None,
        elects: bool = True,
        fronts: int = 1,
    ) -> None:
        # `python -m ledger` imports the package from its working directory first:
        # a snapshot of a commit there tests that commit, whatever the work tree holds.
        self.cwd = cwd
        self.database_url = database_url
        self.log_path = log_path
        self.name = name
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.extra_args = extra_args or []
        # A ledger with the writer election (issue 22): a known internal address,
        # so that the injector can find the writer in the lease row.
        self.internal = f"127.0.0.1:{free_port()}" if elects else ""
        # `--fronts N` (issue 19): this process is a supervisor of N fronts on
        # the one port; front n takes the internal port after `internal` by n.
        self.fronts = fronts if elects else 1
        if self.fronts > 1:
            self.internal = f"127.0.0.1:{_free_ports(self.fronts)}"
        if elects:
            self.extra_args += ["--internal-listen", self.internal, "--writer-lease-s", "2"]
        if self.fronts > 1:
            self.extra_args += ["--fronts", str(self.fronts)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def internal_addresses(self) -> list[str]:
        """The internal (writer election) address of each front; one without fronts."""
        if not self.internal:
            return []
        host, _, port = self.internal.rpartition(":")
        return [f"{host}:{int(port) + n}" for n in range(self.fronts)]

    def front_pids(self) -> dict[str, int]:
        """{internal address: pid} of the fronts alive now (`--fronts` only)."""
        if self.fronts <= 1 or not self.alive() or self.proc is None:
            return {}
        out: dict[str, int] = {}
        for pid in _children(self.proc.pid):
            address = _flag_value(pid, "--internal-listen")
            if address in self.internal_addresses:
                out[address] = pid
        return out

    def kill_front(self, address: str) -> int | None:
        """SIGKILL one front; its supervisor (this process) starts it again. The pid, or None."""
        pid = self.front_pids().get(address)
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def wait_front_back(
        self, address: str, old_pid: int, timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        """Until the supervisor has started that front again and its internal port listens."""
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = self.front_pids().get(address)
            if pid is not None and pid != old_pid:
                with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.5):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: front {address} not back after {timeout_s}s")

    def start(self, wait: bool = True) -> None:
        if self.alive():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n==== {self.name} start #{self.starts + 1} at {time.time():.3f}\n".encode())
        log.flush()
        args = [
            sys.executable, "-m", "ledger", "serve",
            "--listen", self.target,
            "--database-url", self.database_url, "--migrate-at-start",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
        log.close()
        self.starts += 1
        self.paused = False
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            if health_status(self.target) == "SERVING":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not SERVING after {timeout_s}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sig in (signal.SIGSTOP, signal.SIGCONT):
                # A paused pod is every front paused: the supervisor only forwards
                # SIGTERM, SIGINT and SIGHUP.
                for pid in self.front_pids().values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (with fronts: the supervisor, whose fronts die with it)."""
        if self.proc is None:
            return
        fronts = list(self.front_pids().values())
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.paused = False
        deadline = time.monotonic() + 10
        while fronts and time.monotonic() < deadline:  # PR_SET_PDEATHSIG: gone shortly
            fronts = [pid for pid in fronts if _alive(pid)]
            time.sleep(0.05)

    def terminate(self, timeout_s: float = 30) -> int | None:
        """SIGTERM, wait for the drain; SIGKILL if it does not exit. Returns the exit code."""
        if self.proc is None:
            return None
        if self.paused:
            self.resume()
        self._signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Whatever state it is in, make sure it is gone."""
        if self.alive():
            self.resume()
            if self.terminate(timeout_s=15) is None:
                self.kill()
