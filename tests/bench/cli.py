"""`python -m tests.bench`: flags, and the run from fresh database to last line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import database, report
from tests.bench.facts import cpu_pressure, git_facts, machine_facts
from tests.bench.load import Workers
from tests.bench.points import PointRunner, Target
from tests.bench.server import RssSampler, ServerUnderTest, ledger_cli
from tests.bench.stats import PointResult
from tests.bench.workloads import WATCHED, WORKLOADS

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    """Every knob of one bench run (recorded in its JSON)."""

    workloads: tuple[str, ...]
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    seed: int
    accounts: int
    client_procs: int
    channels_per_proc: int
    timeout_s: float
    target: str | None
    target_metrics: str | None
    target_pid: int | None
    database_url: str | None
    pgbench: bool
    pgbench_scale: int
    server_args: tuple[str, ...]
    out_dir: Path
    keep_db: bool
    verify: bool
    noop_server: bool
    analyze: bool
    replicas: int = 1
    schedules: bool = False
    watchers: int = 0
    stream_replica: bool = False

    @property
    def with_stream_replica(self) -> bool:
        """--stream-replica, or a workload whose consumers it serves."""
        return self.stream_replica or any(w in WATCHED for w in self.workloads)


def _csv(kind: type, text: str) -> tuple[Any, ...]:
    return tuple(kind(part.strip()) for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None = None) -> Settings:
    """Flags -> Settings."""
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of %(default)s")
    ap.add_argument("--concurrency", default="1,8,64,256", help="RPCs in flight, comma list")
    ap.add_argument("--duration-s", type=float, default=8.0, help="measured seconds per point")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds before each")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--accounts", type=int, default=10_000, help="uniform accounts to create")
    ap.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--channels-per-proc", type=int, default=1, help="HTTP/2 connections each")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="deadline of every RPC")
    ap.add_argument("--target", help="HOST:PORT of a running server (none is started)")
    ap.add_argument("--target-metrics", help="HOST:PORT of that server's /metrics")
    ap.add_argument("--target-pid", type=int, help="that server's pid (for RSS and CPU)")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("LEDGER_BENCH_DATABASE_URL"),
        help="admin URL of the PostgreSQL to use (default: env LEDGER_BENCH_DATABASE_URL, "
        "else an embedded pgserver); the bench creates its own database in it",
    )
    ap.add_argument("--no-pgbench", action="store_true", help="skip the pgbench comparison")
    ap.add_argument("--pgbench-scale", type=int, default=10)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench-results")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the bench database")
    ap.add_argument("--verify", action="store_true", help="run `ledger verify` at the end")
    ap.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip the ANALYZE after creating the accounts (see docs/performance.md)",
    )
    ap.add_argument(
        "--noop-server",
        action="store_true",
        help="calibrate: run against tests/bench/noop_server.py instead of the ledger",
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="`ledger serve` processes on the one database (one writer, the others forward"
        " to it); the load spreads evenly over them",
    )
    ap.add_argument(
        "--schedules",
        action="store_true",
        help="give every account a monthly grant schedule (issue 23's throughput check)",
    )
    ap.add_argument(
        "--watchers",
        type=int,
        default=0,
        help="change-stream consumers (WatchTransactions from now, whole ledger) reading"
        " during the run, in a process of their own; their lag is reported",
    )
    ap.add_argument(
        "--stream-replica",
        action="store_true",
        help="start one more replica that takes no load and serves the --watchers streams"
        " (docs/operations.md, 'Where change streams are served'); its CPU counts as the"
        " server's",
    )
    ns = ap.parse_args(argv)
    workloads = _csv(str, ns.workloads)
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads: {sorted(unknown)}")
    if ns.watchers and any(w in WATCHED for w in workloads):
        ap.error(f"--watchers watches the whole run: leave out {sorted(WATCHED)}")
    return Settings(
        workloads=workloads,
        concurrency=_csv(int, ns.concurrency),
        duration_s=ns.duration_s,
        warmup_s=ns.warmup_s,
        seed=ns.seed,
        accounts=ns.accounts,
        client_procs=ns.client_procs,
        channels_per_proc=ns.channels_per_proc,
        timeout_s=ns.timeout_s,
        target=ns.target,
        target_metrics=ns.target_metrics,
        target_pid=ns.target_pid,
        database_url=ns.database_url,
        pgbench=not ns.no_pgbench,
        pgbench_scale=ns.pgbench_scale,
        server_args=tuple(ns.server_arg),
        out_dir=ns.out_dir,
        keep_db=ns.keep_db,
        verify=ns.verify,
        noop_server=ns.noop_server,
        analyze=not ns.no_analyze,
        replicas=ns.replicas,
        schedules=ns.schedules,
        watchers=ns.watchers,
        stream_replica=ns.stream_replica,
    )


def say(text: str) -> None:
    """Progress on stdout, flushed (the last line of stdout is the summary)."""
    print(text, flush=True)


@dataclass
class Run:
    """What a run accumulates, for the JSON file."""

    settings: Settings
    run_id: str
    started_at: str
    facts: dict[str, Any]
    pgbench: dict[int, dict[str, Any]]
    points: list[PointResult]
    setup_s: float = 0.0
    rss_peak_mb: float | None = None
    verify_exit: int | None = None
    server_command: list[str] | None = None

    def document(self, line: str) -> dict[str, Any]:
        """The JSON of the run."""
        settings = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.settings).items()
        }
        if settings.get("database_url"):
            settings["database_url"] = "<given>"
        return {
            "schema": 1,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "git": git_facts(REPO),
            "settings": settings,
            "facts": self.facts,
            "server_command": self.server_command,
            "setup_s": round(self.setup_s, 2),
            "pgbench": {str(c): v for c, v in self.pgbench.items()},
            "points": [p.to_json() for p in self.points],
            "rss_peak_mb": self.rss_peak_mb,
            "verify_exit": self.verify_exit,
            "last_line": line,
        }


def _sweep(
    run: Run,
    runner: PointRunner,
    pg: database.Postgres | None,
    db_url: str | None,
    logs: Path,
) -> None:
    s = run.settings
    for concurrency in s.concurrency:
        if pg is not None and db_url is not None and s.pgbench:
            clients = min(concurrency, database.pgbench_client_limit(db_url))
            result = database.pgbench_run(pg, db_url, clients, max(1, round(s.duration_s)))
            run.pgbench[concurrency] = result
            say(f"pgbench tpcb-like  c={clients:<4} tps {result['tps']:9.0f}"
                f"  (latency avg {result['latency_avg_ms']} ms, p50"
                f" {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms)")  # fmt: skip
        for workload in s.workloads:
            tps = run.pgbench.get(concurrency, {}).get("tps")
            if workload in WATCHED:
                point = _watched_point(runner, workload, concurrency, tps, logs)
            else:
                point = runner.run(workload, concurrency, tps)
            run.points.append(point)
            say(report.table([point]).splitlines()[-1])
        _watched_ratios(run.points, concurrency)


def _watched_ratios(points: list[PointResult], concurrency: int) -> None:
    """A watched point's rate over its unwatched workload's at the same concurrency in
    the same run (`ratio_to_base`): the median of runs takes the median of these
    same-run ratios, as it does for the ratio to pgbench."""
    here = {p.workload: p for p in points if p.concurrency == concurrency}
    for workload, (base, _) in WATCHED.items():
        watched, unwatched = here.get(workload), here.get(base)
        if watched is not None and unwatched is not None and unwatched.ops_per_s:
            watched.server["ratio_to_base"] = round(watched.ops_per_s / unwatched.ops_per_s, 3)


def execute(s: Settings) -> Run:
    """The whole run: fresh database, server, load, verify, drop; raises when setup fails."""
    now = datetime.now(UTC)
    run_id = now.strftime("%Y%m%dT%H%M%SZ")
    run = Run(s, run_id, now.isoformat(), machine_facts(), {}, [])
    logs = s.out_dir / f"bench-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as db_stack:
        pg, db_name, db_url = None, None, None
        if s.target is None or s.database_url:
            pg = database.locate(s.database_url, s.out_dir / "pgdata")
            db_name = f"creditledger_bench_{run_id.lower()}_{os.getpid()}"
            db_url = database.create_database(pg, db_name)
            if not s.keep_db:
                db_stack.callback(database.drop_database, pg, db_name)
            run.facts["postgres"] = database.server_facts(db_url)
        with ExitStack() as stack:
            _load(run, stack, pg, db_name, db_url, logs)
        # The server is stopped now: verify reads a quiet database.
        if s.verify and db_url is not None and s.target is None and not s.noop_server:
            run.verify_exit = ledger_cli(["verify", "--database-url", db_url], logs / "verify.log")
            say(f"ledger verify: exit {run.verify_exit}")
    run.facts["loadavg_end"] = os.getloadavg()
    run.facts["cpu_pressure_end"] = cpu_pressure()
    return run


def _load(
    run: Run,
    stack: ExitStack,
    pg: database.Postgres | None,
    db_name: str | None,
    db_url: str | None,
    logs: Path,
) -> None:
    s = run.settings
    target = _start_server(s, run, stack, db_url, logs)
    if pg is not None and db_url is not None and s.pgbench:
        database.pgbench_init(pg, db_url, s.pgbench_scale)
    workers = Workers(s.client_procs, target.address, s.channels_per_proc)
    stack.callback(workers.close)
    started = time.monotonic()
    workers.setup(s.accounts, schedules=s.schedules)
    run.setup_s = time.monotonic() - started
    say(f"setup: {s.accounts} accounts created and funded in {run.setup_s:.1f} s")
    if s.analyze and db_url is not None and s.target is None:
        database.analyze(db_url)  # with --target the server's database is not ours to know
    runner = PointRunner(s, workers, target, db_url, db_name)
    watchers = None
    if s.watchers:
        watchers = _start_watchers(s.watchers, target, logs / "watchers.json")
        runner.watcher_pids = (watchers.pid,)
    with RssSampler(target.pid) as sampler:
        _sweep(run, runner, pg, db_url, logs)
    if watchers is not None:
        run.facts["watchers"] = _stop_watchers(watchers, logs / "watchers.json")
        say(f"watchers: {run.facts['watchers']}")
    run.rss_peak_mb = sampler.peak_bytes / 2**20 if target.pid else None


def _start_watchers(n: int, target: Target, out: Path) -> subprocess.Popen[bytes]:
    address = target.stream_address or target.address
    cmd = [sys.executable, "-m", "tests.bench.watchers", "--target", address]
    cmd += ["--n", str(n), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO)
    time.sleep(1.0)  # the streams are open before the first point
    return proc


def _stop_watchers(proc: subprocess.Popen[bytes], out: Path) -> Any:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return json.loads(out.read_text()) if out.exists() else {"error": "no report"}


def _watched_point(
    runner: PointRunner, workload: str, concurrency: int, tps: float | None, logs: Path
) -> PointResult:
    """A point of a WATCHED workload: its load while consumers read the change
    stream on the stream replica; their CPU counts (`watchers`), and what they saw
    goes into the point's server figures (`stream_*`)."""
    _, streams = WATCHED[workload]
    out = logs / f"watchers-{workload}-{concurrency}.json"
    proc = _start_watchers(streams, runner.target, out)
    runner.watcher_pids = (proc.pid,)
    try:
        point = runner.run(workload, concurrency, tps)
    finally:
        runner.watcher_pids = ()
        seen = _stop_watchers(proc, out)
    received = seen.get("received_per_stream") or [0]
    point.server["stream_received_min"] = min(received)
    point.server["stream_received_max"] = max(received)
    common = seen.get("received_in_common_per_stream") or [0]
    point.server["stream_received_in_common_min"] = min(common)
    point.server["stream_received_in_common_max"] = max(common)
    point.server["stream_lag_p50_ms"] = seen.get("lag_ms_p50")
    point.server["stream_lag_p99_ms"] = seen.get("lag_ms_p99")
    return point


def _start_server(
    s: Settings, run: Run, stack: ExitStack, db_url: str | None, logs: Path
) -> Target:
    if s.target is not None:
        return Target(address=s.target, metrics=s.target_metrics, pid=s.target_pid)
    if db_url is None:
        raise RuntimeError("no database for the server")
    module = "tests.bench.noop_server" if s.noop_server else "ledger"
    servers = []
    count = max(1, s.replicas) + int(s.with_stream_replica)
    for n in range(count):
        log = logs / ("server.log" if n == 0 else f"server-{n}.log")
        args = s.server_args
        if s.with_stream_replica and n == count - 1:
            args = (*args, "--never-writer")
        server = ServerUnderTest(db_url, log, args, module)
        if n == 0:  # the writer's (a stream replica adds --never-writer)
            run.server_command = [a if a != db_url else "URL" for a in server.command]
        stack.enter_context(server)
        say(f"server: pid {server.pid} on {server.listen}, metrics {server.metrics}")
        servers.append(server)
    # The stream replica (--never-writer) takes no load.
    load = servers[:-1] if s.with_stream_replica else servers
    return Target(
        address=",".join(x.listen for x in load),
        metrics=",".join(x.metrics for x in load),
        pid=servers[0].pid,
        other_pids=tuple(x.pid for x in servers[1:]),
        stream_address=servers[-1].listen if s.with_stream_replica else None,
    )


def _loads(value: Any) -> str:
    return "/".join(f"{v:.2f}" for v in value) if value else "n/a"


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 1 when any RPC failed unexpectedly or verify failed."""
    settings = parse_args(argv)
    run = execute(settings)
    line = report.last_line(run.points, run.rss_peak_mb)
    json_path = settings.out_dir / f"bench-{run.run_id}.json"
    png_path = settings.out_dir / f"bench-{run.run_id}.png"
    report.write_json(json_path, run.document(line))
    tps = {c: float(v["tps"]) for c, v in run.pgbench.items()}
    commit = run.document(line)["git"].get("commit", "?")
    title = f"creditledger bench {run.run_id} @ {str(commit)[:10]}, {os.cpu_count()} cores"
    report.chart(png_path, run.points, tps, title)
    say("")
    say(report.table(run.points))
    say(f"json: {json_path}")
    say(f"chart: {png_path}")
    for budget in report.cpu_budget(run.points, os.cpu_count() or 1):
        say(budget)
    facts = run.facts
    say(
        f"machine: {os.cpu_count()} cores, loadavg start {_loads(facts.get('loadavg_start'))}"
        f" end {_loads(facts.get('loadavg_end'))}; cpu pressure end {facts.get('cpu_pressure_end')}"
        "; busy% = the whole machine's CPU in percent of one core, per point"
    )
    if (p99 := report.p99_beside_pgbench(run.points, run.pgbench)) is not None:
        say(p99)
    failed = any(p.unexpected_total for p in run.points) or run.verify_exit not in (None, 0)
    say(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
