"""One measured point: a workload at a concurrency, with the server's view of it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.bench import database
from tests.bench.load import Plan, WorkerReport, Workers
from tests.bench.server import (
    RssSampler,
    cpu_seconds,
    machine_busy_seconds,
    metric_delta,
    process_tree,
    scrape,
)
from tests.bench.stats import PointResult, latency_summary

if TYPE_CHECKING:
    from tests.bench.cli import Settings

# Seconds between sending the plans and the first RPC, so every worker starts together.
START_DELAY_S = 0.3


@dataclass(frozen=True)
class Target:
    """The server the load goes to, and what we can observe of it."""

    address: str  # a comma list when several replicas serve
    metrics: str | None  # likewise
    pid: int | None
    other_pids: tuple[int, ...] = ()  # the other replicas' (CPU is the sum of all)
    stream_address: str | None = None  # --stream-replica: where the watchers connect


@dataclass
class CpuReading:
    """CPU seconds of each party at one instant."""

    at: float
    server: float
    generator: float
    postgres: float
    machine_busy: float
    watchers: float
    # PostgreSQL's per process: its backends come and go (the writer's connection
    # is replaced after a timeout), and a process gone by the second reading would
    # take its whole past CPU out of the delta (negative pg% were seen).
    postgres_each: dict[int, float]

    @staticmethod
    def take(
        server: list[int], generator: list[int], postgres: list[int], watchers: tuple[int, ...] = ()
    ) -> CpuReading:
        """Read /proc now."""
        busy, _ = machine_busy_seconds()
        each = {pid: cpu_seconds([pid]) for pid in postgres}
        return CpuReading(
            at=time.monotonic(),
            server=cpu_seconds(server),
            generator=cpu_seconds(generator),
            postgres=sum(each.values()),
            machine_busy=busy,
            watchers=cpu_seconds(list(watchers)) if watchers else 0.0,
            postgres_each=each,
        )

    def share_since(self, start: CpuReading) -> dict[str, float | None]:
        """Percent of ONE core each party used between `start` and this reading."""
        wall = self.at - start.at
        if wall <= 0:
            return {}
        shares = {
            name: round(100.0 * (getattr(self, name) - getattr(start, name)) / wall, 1)
            for name in ("server", "generator", "machine_busy")
        }
        if self.watchers or start.watchers:  # the change-stream consumers' process (--watchers)
            shares["watchers"] = round(100.0 * (self.watchers - start.watchers) / wall, 1)
        # Only processes that lived through the window (and were alive at its start).
        pg = sum(
            max(0.0, now - start.postgres_each[pid])
            for pid, now in self.postgres_each.items()
            if now and start.postgres_each.get(pid)
        )
        shares["postgres"] = round(100.0 * pg / wall, 1)
        return shares


def _merge(reports: list[WorkerReport]) -> WorkerReport:
    merged = WorkerReport()
    for r in reports:
        merged.latencies_ms.extend(r.latencies_ms)
        for mine, theirs in (
            (merged.by_method, r.by_method),
            (merged.expected_rejections, r.expected_rejections),
            (merged.unexpected_errors, r.unexpected_errors),
        ):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
    return merged


def _server_view(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    """What the server's /metrics say about the point (None where a metric is missing)."""
    batches = metric_delta(before, after, "ledger_batch_size_count")
    batched = metric_delta(before, after, "ledger_batch_size_sum")
    txn_count = metric_delta(before, after, "ledger_transaction_seconds_count")
    txn_sum = metric_delta(before, after, "ledger_transaction_seconds_sum")
    return {
        "serialization_retries": metric_delta(before, after, "ledger_serialization_retries_total"),
        "retries_exhausted": metric_delta(before, after, "ledger_retries_exhausted_total"),
        "batches": batches,
        "mean_batch": batched / batches if batches and batched is not None else None,
        "mean_transaction_ms": 1000 * txn_sum / txn_count if txn_count and txn_sum else None,
    }


class PointRunner:
    """Runs points against one server with one pool of workers."""

    def __init__(
        self,
        settings: Settings,
        workers: Workers,
        target: Target,
        db_url: str | None,
        db_name: str | None,
    ) -> None:
        self.s = settings
        self.workers = workers
        self.target = target
        self.db_url = db_url
        self.db_name = db_name
        self.count = 0
        self.watcher_pids: tuple[int, ...] = ()  # the consumers' process, when --watchers

    def _plans(self, workload: str, concurrency: int, start_at: float) -> list[Plan]:
        procs = len(self.workers.processes)
        plans, first = [], 0
        for n in range(procs):
            slots = concurrency // procs + (1 if n < concurrency % procs else 0)
            plans.append(
                Plan(
                    workload=workload,
                    slots=slots,
                    first_slot=first,
                    start_at=start_at,
                    warmup_s=self.s.warmup_s,
                    duration_s=self.s.duration_s,
                    seed=self.s.seed,
                    key_prefix=f"p{self.count}",
                    accounts=self.s.accounts,
                    timeout_s=self.s.timeout_s,
                )
            )
            first += slots
        return plans

    def _pg_pids(self) -> list[int]:
        if self.db_url is None or self.db_name is None:
            return []
        return database.backend_pids(self.db_url, self.db_name)

    def run(self, workload: str, concurrency: int, pgbench_tps: float | None) -> PointResult:
        """Drive one point and measure it."""
        self.count += 1
        server_pids = process_tree(self.target.pid) if self.target.pid else []
        for pid in self.target.other_pids:
            server_pids += process_tree(pid)
        pg_pids = self._pg_pids()
        before = scrape(self.target.metrics)
        start_at = time.monotonic() + START_DELAY_S
        window_start = start_at + self.s.warmup_s
        busy = self.workers.start(self._plans(workload, concurrency, start_at))
        with RssSampler(self.target.pid) as rss:
            time.sleep(max(0.0, window_start - time.monotonic()))
            first = CpuReading.take(server_pids, self.workers.pids, pg_pids, self.watcher_pids)
            time.sleep(max(0.0, window_start + self.s.duration_s - time.monotonic()))
            last = CpuReading.take(server_pids, self.workers.pids, pg_pids, self.watcher_pids)
            reports = self.workers.collect(busy, self.s.timeout_s + self.s.duration_s + 60)
        after = scrape(self.target.metrics)
        merged = _merge(reports)
        # Operations, not RPCs: a SubmitBatch counts its commands (see workloads).
        ops = sum(merged.by_method.values())
        server = _server_view(before, after)
        server["rss_peak_mb"] = round(rss.peak_bytes / 2**20, 1) if self.target.pid else None
        ops_per_s = ops / self.s.duration_s
        return PointResult(
            workload=workload,
            concurrency=concurrency,
            duration_s=self.s.duration_s,
            ops=ops,
            ops_per_s=ops_per_s,
            latency_ms=latency_summary(merged.latencies_ms),
            by_method=merged.by_method,
            expected_rejections=merged.expected_rejections,
            unexpected_errors=merged.unexpected_errors,
            server=server,
            # The machine is shared: its 1-minute load beside every point's busy share.
            cpu={**last.share_since(first), "loadavg_1m": round(os.getloadavg()[0], 2)},
            pgbench_tps=pgbench_tps,
            ratio_to_pgbench=round(ops_per_s / pgbench_tps, 3) if pgbench_tps else None,
        )
