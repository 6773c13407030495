"""A real `python -m ledger serve` subprocess on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    def __init__(
        self,
        database_url: str,
        port: int | None = None,
        metrics_port: int | None = None,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.extra_args = list(extra_args or [])
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, wait_s: float = 30.0) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "ledger",
            "serve",
            "--listen",
            self.target,
            "--database-url",
            self.database_url,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            *self.extra_args,
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = out
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=out, env={**os.environ, **(self.env or {})}
        )
        self.wait_serving(wait_s)
        return self

    def wait_serving(self, wait_s: float = 30.0) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ledger serve exited with {self.proc.returncode}")
            try:
                with grpc.insecure_channel(self.target) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1.0
                    )
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"ledger serve on {self.target} not SERVING within {wait_s} s")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (drain), then wait; SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill() if exc[0] else self.stop()
