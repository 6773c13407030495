"""`ledger serve --fronts N`: N front processes on one port, one elected writer.

Issue 19: one Python process terminates gRPC on one core. With `--fronts N`
this process becomes a small supervisor that starts N `ledger serve`
processes sharing `--listen` (SO_REUSEPORT: the kernel spreads connections
over them). Each front is a full replica: it authenticates, validates and
answers reads itself, and it takes part in the writer election like any
replica, so one of them is the writer and the others forward their commands
to it over the internal WriterService, exactly as replicas on other machines
do (docs/design.md, "One writer per database").

The supervisor:
- gives each front its own metrics port on loopback and its own internal
  port (`--internal-listen` port + i, advertised as `--advertise` port + i;
  with port 0 each picks a free one);
- serves one /metrics on `--metrics-listen` with every front's samples, each
  labelled `front="i"` (sum over `front` for the whole pod);
- forwards SIGTERM/SIGINT (each front drains, the writer hands its lease
  over) and SIGHUP, and waits for all of them;
- restarts a front that exits by itself, after a second; fronts die with the
  supervisor (PR_SET_PDEATHSIG), so a SIGKILLed pod leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ledger.config import Config

log = logging.getLogger("ledger.fronts")

_PR_SET_PDEATHSIG = 1
RESTART_DELAY_S = 1.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _split(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Front:
    def __init__(self, n: int, argv: list[str]) -> None:
        self.n = n
        self.argv = argv
        self.metrics = f"127.0.0.1:{_free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "ledger",
            "serve",
            *self.argv,
            "--metrics-listen",
            self.metrics,
        ]
        self.proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
        self.starts += 1
        log.info("front %d started (pid %d)", self.n, self.proc.pid)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


class Fronts:
    def __init__(self, cfg: Config, serve_argv: list[str]) -> None:
        self.cfg = cfg
        self.fronts = [Front(n, self._argv(cfg, serve_argv, n)) for n in range(cfg.fronts)]
        self._stop = threading.Event()
        self._embedded: object = None

    def _argv(self, cfg: Config, serve_argv: list[str], n: int) -> list[str]:
        """The front's own flags, after the supervisor's (argparse keeps the last)."""
        host, port = _split(cfg.internal_listen)
        extra = ["--fronts", "1", "--reuse-port"]
        extra += ["--internal-listen", f"{host}:{port + n if port else 0}"]
        if cfg.advertise:
            a_host, a_port = _split(cfg.advertise)
            extra += ["--advertise", f"{a_host}:{a_port + n}"]
        return [*serve_argv, *extra]

    def run(self) -> int:
        from ledger.listen import bind_problem

        for flag, address in (
            ("--listen", self.cfg.listen),
            ("--metrics-listen", self.cfg.metrics_listen),
        ):
            problem = bind_problem(address) if address else None
            if problem is not None:
                print(f"ledger serve: {flag} {address}: {problem}", file=sys.stderr)
                return 2
        if not self.cfg.database_url:
            self._start_embedded()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._each(signal.SIGHUP))
        metrics = self._serve_metrics()
        for front in self.fronts:
            front.start()
        try:
            while not self._stop.wait(0.2):
                self._restart_exited()
        finally:
            log.info("stopping %d fronts", len(self.fronts))
            self._each(signal.SIGTERM)
            deadline = time.monotonic() + self.cfg.drain_s + 15
            codes = [self._wait(f, deadline) for f in self.fronts]
            if metrics is not None:
                metrics.shutdown()
            self._stop_embedded()
        return 0 if all(code == 0 for code in codes) else 1

    def _each(self, sig: signal.Signals) -> None:
        for front in self.fronts:
            front.signal(sig)

    def _wait(self, front: Front, deadline: float) -> int | None:
        if front.proc is None:
            return None
        try:
            return front.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            front.proc.kill()
            return front.proc.wait()

    def _restart_exited(self) -> None:
        for front in self.fronts:
            if front.proc is not None and front.proc.poll() is not None:
                log.warning("front %d exited with %s; restarting", front.n, front.proc.returncode)
                time.sleep(RESTART_DELAY_S)
                if not self._stop.is_set():
                    front.start()

    def _start_embedded(self) -> None:
        from ledger.storage.pool import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(self.cfg.data_dir))
        url = embedded.start()
        self._embedded = embedded
        for front in self.fronts:
            front.argv += ["--database-url", url]

    def _stop_embedded(self) -> None:
        stop = getattr(self._embedded, "stop", None)
        if stop is not None:
            stop()

    def _serve_metrics(self) -> ThreadingHTTPServer | None:
        if not self.cfg.metrics_listen:
            return None
        host, port = _split(self.cfg.metrics_listen)
        fronts = self.fronts

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = merged_metrics([f.metrics for f in fronts]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        server = ThreadingHTTPServer((host or "0.0.0.0", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True, name="fronts-metrics").start()
        return server


def merged_metrics(endpoints: list[str]) -> str:
    """Every front's exposition, each sample labelled front="i", HELP/TYPE once per family."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    order: list[str] = []
    for n, endpoint in enumerate(endpoints):
        try:
            with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            continue  # a front restarting: its series are absent from this scrape
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                if family not in headers:
                    headers[family] = []
                    order.append(family)
                if line not in headers[family]:
                    headers[family].append(line)
                continue
            if not line or line.startswith("#"):
                continue
            samples.setdefault(family, []).append(_label(line, f'front="{n}"'))
    out: list[str] = []
    for family in order:
        out.extend(headers[family])
        out.extend(samples.get(family, []))
    return "\n".join(out) + "\n"


def _label(sample: str, label: str) -> str:
    name_end = min((i for i in (sample.find("{"), sample.find(" ")) if i >= 0), default=-1)
    if name_end < 0:
        return sample
    if sample[name_end] == "{":
        return f"{sample[: name_end + 1]}{label},{sample[name_end + 1 :]}"
    return f"{sample[:name_end]}{{{label}}}{sample[name_end:]}"
