"""`make soak`: the mixed workload for a long time, with retention shortened to minutes.

Against a PostgreSQL cluster of its own with autovacuum on (initdb into a
temporary directory as the `postgres` user, production-like settings), it
measures the peak of the mixed workload, then holds a steady fraction of it
and reports, every minute: throughput, p50/p99, idempotency rows, dead
tuples, table and index sizes, the server's RSS. It passes when, over the last
five minutes, the idempotency rows stay within retention x rate + 10%, p99
stays within 1.5x the first five minutes, RSS is flat within 10%, and
`ledger verify` passes at the end. See docs/performance.md ("Soak").

    python -m tests.bench.soak --minutes 20 --retention-s 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.bench.load import Plan, WorkerReport, Workers
from tests.bench.server import ServerUnderTest, ledger_cli, rss_bytes
from tests.bench.stats import percentile

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
# Production-like: durable commits, autovacuum on at its defaults, room for the WAL.
PG_SETTINGS = {
    "shared_buffers": "256MB",
    "max_connections": "100",
    "autovacuum": "on",
    "synchronous_commit": "on",
    "fsync": "on",
    "wal_level": "replica",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "5min",
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
}
TABLES = ("accounts", "balances", "lots", "reservations", "entries", "idempotency")


class SoakUnavailable(Exception):
    """This machine cannot run the soak (no PostgreSQL binaries, not root, ...)."""


@dataclass
class Minute:
    minute: int
    ops: int
    mutations: int
    keys_per_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    idem_rows: int
    dead_tuples: int
    table_mb: dict[str, float]
    index_mb: dict[str, float]
    rss_mb: float
    load1: float
    errors: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def own_cluster(port: int) -> Iterator[str]:
    """initdb + pg_ctl start in a temporary directory as `postgres`; the URL."""
    if not PG_BIN_DIRS:
        raise SoakUnavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        raise SoakUnavailable("the soak runs initdb as `postgres` through runuser: run it as root")
    bin_dir = PG_BIN_DIRS[0]
    root = Path(tempfile.mkdtemp(prefix="creditledger-soak-"))
    shutil.chown(root, "postgres")
    data = root / "data"

    def as_postgres(*args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    try:
        as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {port}\n")
            for k, v in PG_SETTINGS.items():
                conf.write(f"{k} = {v}\n")
        as_postgres(
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "start"
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _database_sample(url: str) -> tuple[int, float, int, dict[str, float], dict[str, float]]:
    """Idempotency rows (expired or not, as long as they are stored), keys written
    per second over the last minute, dead tuples, table and index sizes."""
    conn = await asyncpg.connect(url)
    try:
        idem_rows, recent = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE created_at > now() - interval '60 seconds')"
            " FROM idempotency"
        )
        dead = await conn.fetchval("SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables")
        tables: dict[str, float] = {}
        indexes: dict[str, float] = {}
        for t in TABLES:
            # A partitioned table's size is its partitions' sizes.
            row = await conn.fetchrow(
                "SELECT coalesce(sum(pg_table_size(r)), 0) AS t, coalesce(sum(pg_indexes_size(r)), 0) AS i"
                " FROM (SELECT $1::regclass AS r UNION ALL SELECT inhrelid::regclass FROM pg_inherits"
                " WHERE inhparent = $1::regclass) AS rels",
                t,
            )
            tables[t] = round(float(row["t"]) / 2**20, 1)
            indexes[t] = round(float(row["i"]) / 2**20, 1)
        return int(idem_rows), recent / 60.0, int(dead), tables, indexes
    finally:
        await conn.close()


def _plans(
    workers: int, slots: int, duration_s: float, pace_s: float, accounts: int, tag: str
) -> list[Plan]:
    start_at = time.monotonic() + 0.2
    per = [slots // workers + (1 if n < slots % workers else 0) for n in range(workers)]
    first = [sum(per[:n]) for n in range(workers)]
    return [
        Plan(
            workload="mixed-paced" if pace_s > 0 else "mixed",
            slots=per[n],
            first_slot=first[n],
            start_at=start_at,
            warmup_s=0.0,
            duration_s=duration_s,
            seed=7,
            key_prefix=tag,
            accounts=accounts,
            timeout_s=10.0,
            pace_s=pace_s,
        )
        for n in range(workers)
    ]


def _merge(reports: list[WorkerReport]) -> tuple[list[float], dict[str, int], dict[str, int]]:
    lat: list[float] = []
    by_method: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in reports:
        lat += r.latencies_ms
        for k, v in r.by_method.items():
            by_method[k] = by_method.get(k, 0) + v
        for k, v in r.unexpected_errors.items():
            errors[k] = errors.get(k, 0) + v
    return sorted(lat), by_method, errors


def _run(
    w: Workers, plans: list[Plan], duration_s: float
) -> tuple[list[float], dict[str, int], dict[str, int]]:
    busy = w.start(plans)
    return _merge(w.collect(busy, duration_s + 60))


@dataclass
class Verdict:
    minutes: int
    ops: int
    p99_first: float
    p99_last: float
    idem_rows_max: int
    idem_rows_bound: int
    rss_growth_pct: float
    verify_ok: bool
    violations: list[str]

    def last_line(self) -> str:
        return (
            f"soak: minutes={self.minutes} ops={self.ops} p99_first={self.p99_first:.1f} ms"
            f" p99_last={self.p99_last:.1f} ms idem_rows_max={self.idem_rows_max}"
            f" idem_rows_bound={self.idem_rows_bound} rss_growth={self.rss_growth_pct:.1f}%"
            f" violations={len(self.violations)}"
        )


def judge(minutes: list[Minute], retention_s: float, window: int, verify_ok: bool) -> Verdict:
    """The pass criteria over the first and last `window` minutes."""
    first, last = minutes[:window], minutes[-window:]
    # The rate keys are written at (every mutation but the sweeper's writes one),
    # as the database saw it over each minute.
    rate = sum(m.keys_per_s for m in last) / len(last)
    bound = int(retention_s * rate * 1.10)
    idem_max = max(m.idem_rows for m in last)
    p99_first = percentile(sorted(m.p99_ms for m in first), 50)
    p99_last = percentile(sorted(m.p99_ms for m in last), 50)
    rss = [m.rss_mb for m in last]
    growth = (rss[-1] - rss[0]) / rss[0] * 100 if rss[0] else 0.0
    violations = []
    if idem_max > bound:
        violations.append(f"idempotency rows {idem_max} > bound {bound}")
    if p99_last > 1.5 * p99_first:
        violations.append(f"p99 {p99_last:.1f} ms > 1.5 x {p99_first:.1f} ms")
    if max(rss) > 1.10 * min(rss):
        violations.append(f"RSS not flat: {min(rss):.0f}..{max(rss):.0f} MB")
    if not verify_ok:
        violations.append("ledger verify failed")
    if any(m.errors for m in minutes):
        violations.append(
            "unexpected errors: " + json.dumps([m.errors for m in minutes if m.errors])
        )
    return Verdict(
        minutes=len(minutes),
        ops=sum(m.ops for m in minutes),
        p99_first=p99_first,
        p99_last=p99_last,
        idem_rows_max=idem_max,
        idem_rows_bound=bound,
        rss_growth_pct=growth,
        verify_ok=verify_ok,
        violations=violations,
    )


def chart(minutes: list[Minute], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [m.minute for m in minutes]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    axes[0][0].plot(xs, [m.ops_per_s for m in minutes], marker="o")
    axes[0][0].set_title("throughput (ops/s)")
    axes[0][1].plot(xs, [m.p50_ms for m in minutes], marker="o", label="p50")
    axes[0][1].plot(xs, [m.p99_ms for m in minutes], marker="o", label="p99")
    axes[0][1].set_title("latency (ms)")
    axes[0][1].legend()
    axes[1][0].plot(xs, [m.idem_rows for m in minutes], marker="o", label="idempotency rows")
    axes[1][0].plot(xs, [m.dead_tuples for m in minutes], marker="o", label="dead tuples")
    axes[1][0].set_title("rows")
    axes[1][0].legend()
    axes[1][1].plot(xs, [m.rss_mb for m in minutes], marker="o", label="server RSS")
    for t in ("entries", "idempotency", "reservations"):
        axes[1][1].plot(xs, [m.table_mb[t] + m.index_mb[t] for m in minutes], label=f"{t} (+idx)")
    axes[1][1].set_title("MB")
    axes[1][1].legend(fontsize=7)
    for ax in axes.flat:
        ax.set_xlabel("minute")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def soak(args: argparse.Namespace) -> tuple[Verdict, list[Minute], dict[str, Any]]:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partition_s = args.partition_s or max(1.0, args.retention_s / 20)
    with own_cluster(args.port) as url:
        server = ServerUnderTest(
            url,
            out / "soak-server.log",
            [
                "--idempotency-retention-days", str(args.retention_s / 86400),
                "--idempotency-refused-retention-days", str(args.retention_s / 2 / 86400),
                "--idempotency-partition-s", str(partition_s),
            ],
        )  # fmt: skip
        server.start()
        workers = Workers(args.workers, server.listen, 2)
        try:
            workers.setup(args.accounts)
            lat, by_method, _ = _run(
                workers,
                _plans(args.workers, args.peak_slots, args.peak_s, 0, args.accounts, "peak"),
                args.peak_s,
            )
            peak = sum(by_method.values()) / args.peak_s
            target = peak * args.fraction
            slots = args.slots
            pace_s = slots / target
            say(f"soak: peak {peak:.0f} ops/s (p99 {percentile(lat, 99):.1f} ms); holding {target:.0f} ops/s"
                f" ({args.fraction:.0%}) for {args.minutes} min, retention {args.retention_s:g} s,"
                f" partitions of {partition_s:g} s")  # fmt: skip
            minutes: list[Minute] = []
            for n in range(1, args.minutes + 1):
                lat, by_method, errors = _run(
                    workers, _plans(args.workers, slots, 60.0, pace_s, args.accounts, f"m{n}"), 60.0
                )
                ops = sum(by_method.values())
                idem_rows, keys_per_s, dead, tables, indexes = asyncio.run(_database_sample(url))
                m = Minute(
                    minute=n,
                    ops=ops,
                    mutations=ops - by_method.get("GetBalance", 0),
                    keys_per_s=round(keys_per_s, 1),
                    ops_per_s=round(ops / 60.0, 1),
                    p50_ms=round(percentile(lat, 50), 2),
                    p99_ms=round(percentile(lat, 99), 2),
                    idem_rows=idem_rows,
                    dead_tuples=dead,
                    table_mb=tables,
                    index_mb=indexes,
                    rss_mb=round(rss_bytes(server.pid) / 2**20, 1),
                    load1=os.getloadavg()[0],
                    errors=errors,
                )
                minutes.append(m)
                say(
                    f"minute {n:3d}: {m.ops_per_s:7.1f} ops/s  p50 {m.p50_ms:6.1f} ms  p99 {m.p99_ms:7.1f} ms"
                    f"  keys {keys_per_s:6.1f}/s  idem rows {idem_rows:8d}  dead {dead:7d}  entries {tables['entries'] + indexes['entries']:6.1f} MB"
                    f"  idempotency {tables['idempotency'] + indexes['idempotency']:6.1f} MB  rss {m.rss_mb:6.1f} MB"
                    f"  load {m.load1:.1f}" + (f"  errors {errors}" if errors else "")
                )  # fmt: skip
        finally:
            workers.close()
            server.stop()
        verify_ok = ledger_cli(["verify", "--database-url", url], out / "soak-verify.log") == 0
    window = min(5, max(1, len(minutes) // 2))
    verdict = judge(minutes, args.retention_s, window, verify_ok)
    facts = {"peak_ops_per_s": peak, "target_ops_per_s": target, "partition_s": partition_s,
             "retention_s": args.retention_s, "window_minutes": window}  # fmt: skip
    return verdict, minutes, facts


def say(text: str) -> None:
    print(text, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.soak", description=__doc__)
    p.add_argument("--minutes", type=int, default=int(os.environ.get("SOAK_MINUTES", "20")))
    p.add_argument("--retention-s", type=float, default=float(os.environ.get("SOAK_RETENTION_S", "300")),
                   help="idempotency retention of applied requests (refused: half)")  # fmt: skip
    p.add_argument("--partition-s", type=float, default=0.0, help="default: retention / 20")
    p.add_argument("--fraction", type=float, default=0.6, help="of the measured peak")
    p.add_argument("--peak-s", type=float, default=30.0)
    p.add_argument("--peak-slots", type=int, default=64)
    p.add_argument("--slots", type=int, default=64, help="paced operations in flight")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--port", type=int, default=25499)
    p.add_argument("--out-dir", default="bench-results")
    p.add_argument("--chart", default="", help="write the per-minute chart here (PNG)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        verdict, minutes, facts = soak(args)
    except SoakUnavailable as exc:
        print(f"soak: skipped: {exc}", file=sys.stderr)
        return 77
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = Path(args.out_dir)
    document = {"facts": facts, "minutes": [asdict(m) for m in minutes], "verdict": asdict(verdict),
                "last_line": verdict.last_line()}  # fmt: skip
    (out / f"soak-{stamp}.json").write_text(json.dumps(document, indent=1))
    title = (f"soak {time.strftime('%Y-%m-%d %H:%M')}: {facts['target_ops_per_s']:.0f} ops/s target,"
             f" retention {facts['retention_s']:g} s, partitions {facts['partition_s']:g} s")  # fmt: skip
    chart(minutes, Path(args.chart) if args.chart else out / f"soak-{stamp}.png", title)
    for v in verdict.violations:
        say(f"soak: VIOLATION {v}")
    say(verdict.last_line())
    return 0 if not verdict.violations else 1


if __name__ == "__main__":
    sys.exit(main())
