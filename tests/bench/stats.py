"""Latency percentiles and the per-point result record (plain data, stdlib only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def percentile(sorted_ms: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence; NaN when it is empty."""
    if not sorted_ms:
        return math.nan
    rank = math.ceil(pct / 100.0 * len(sorted_ms))
    return float(sorted_ms[min(max(rank, 1), len(sorted_ms)) - 1])


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/p99.9 and the mean, in milliseconds."""
    ordered = sorted(samples_ms)
    summary = {f"p{pct:g}": percentile(ordered, pct) for pct in PERCENTILES}
    summary["mean"] = sum(ordered) / len(ordered) if ordered else math.nan
    return summary


@dataclass
class PointResult:
    """One (workload, concurrency) point: what the clients and the server saw."""

    workload: str
    concurrency: int
    duration_s: float
    ops: int
    ops_per_s: float
    latency_ms: dict[str, float]
    by_method: dict[str, int]
    expected_rejections: dict[str, int]
    unexpected_errors: dict[str, int]
    server: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float | None] = field(default_factory=dict)
    pgbench_tps: float | None = None
    ratio_to_pgbench: float | None = None

    @property
    def unexpected_total(self) -> int:
        """How many RPCs failed in a way the workload did not ask for."""
        return sum(self.unexpected_errors.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN percentiles become null)."""
        latency = {k: (None if math.isnan(v) else round(v, 3)) for k, v in self.latency_ms.items()}
        return {
            "workload": self.workload,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "ops": self.ops,
            "ops_per_s": round(self.ops_per_s, 1),
            "latency_ms": latency,
            "by_method": self.by_method,
            "expected_rejections": self.expected_rejections,
            "unexpected_errors": self.unexpected_errors,
            "server": self.server,
            "cpu_percent_of_one_core": self.cpu,
            "pgbench_tps": self.pgbench_tps,
            "ratio_to_pgbench": self.ratio_to_pgbench,
        }
