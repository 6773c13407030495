"""The server under test: start it, scrape its /metrics, sample its RSS and CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

READY_TIMEOUT_S = 90.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


class ServerUnderTest:
    """`python -m ledger serve` on loopback (or the noop server), its output in a log file."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        extra_args: Sequence[str] = (),
        module: str = "ledger",
    ) -> None:
        self.listen = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.command = [
            sys.executable, "-m", module, "serve",
            "--listen", self.listen,
            "--database-url", database_url,
            "--metrics-listen", self.metrics,
            "--log-level", "warning",
            *extra_args,
        ]  # fmt: skip
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's pid."""
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    def start(self) -> None:
        """Start the server and wait until both its gRPC and metrics ports answer."""
        log = self.log_path.open("wb")
        # A fresh database: `serve` migrates it only when told (docs/security.md).
        env = {**os.environ, "LEDGER_MIGRATE_AT_START": "1"}
        self._proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self._proc.returncode}; see {self.log_path}"
                )
            if _port_open(self.listen) and scrape(self.metrics) is not None:
                return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {READY_TIMEOUT_S} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)

    def __enter__(self) -> ServerUnderTest:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def scrape(metrics_host_port: str | None) -> dict[str, float] | None:
    """Every sample of a Prometheus text page as {'name{labels}': value}; None if unreachable.

    A comma list of endpoints (the replicas) is summed sample by sample."""
    if not metrics_host_port:
        return None
    if "," in metrics_host_port:
        pages = [scrape(one) for one in metrics_host_port.split(",") if one]
        if any(page is None for page in pages):
            return None
        summed: dict[str, float] = {}
        for page in pages:
            for name, value in (page or {}).items():
                summed[name] = summed.get(name, 0.0) + value
        return summed
    try:
        with urllib.request.urlopen(f"http://{metrics_host_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def metric_total(samples: dict[str, float] | None, name: str) -> float | None:
    """The sum over every label set of metric `name` (None when it is absent)."""
    if samples is None:
        return None
    values = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    return sum(values) if values else None


def metric_delta(
    before: dict[str, float] | None, after: dict[str, float] | None, name: str
) -> float | None:
    """How much metric `name` grew between two scrapes."""
    a, b = metric_total(before, name), metric_total(after, name)
    return None if a is None or b is None else b - a


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (a multi-process server counts as one)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User+system CPU seconds consumed so far by `pids`, from /proc/PID/stat.

    A process that is gone counts 0, so take both readings of a delta over
    processes that live through the interval.
    """
    total_ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name; utime and stime are 14 and 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / CLOCK_TICKS


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of a process tree (VmRSS from /proc/PID/status, summed)."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class RssSampler:
    """Samples a process tree's RSS every `interval_s` in a thread; keeps the peak."""

    def __init__(self, pid: int | None, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pid is not None:
                self.peak_bytes = max(self.peak_bytes, rss_bytes(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ledger_cli(args: Sequence[str], log_path: Path, timeout_s: float = 600.0) -> int:
    """Run `python -m ledger ARGS` (migrate, verify) and return its exit code."""
    with log_path.open("ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "ledger", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            env={**os.environ},
            check=False,
        )
    return done.returncode
