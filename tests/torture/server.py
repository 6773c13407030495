"""A `ledger serve` subprocess the harness can kill, pause, resume and restart.

The harness keeps its own wrapper (rather than tests/support/process.py) because
it needs the raw pid for SIGSTOP/SIGCONT and a restart on the same ports, which
is what a supervisor (systemd, Kubernetes) does after a crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
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
        if elects:
            self.extra_args += ["--internal-listen", self.internal, "--writer-lease-s", "2"]
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
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.paused = False

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
