"""What the bench prints and writes: the table, the last line, the JSON file, the chart."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.bench.stats import PointResult

THROUGHPUT_AT = 64
P99_AT = 8


def pick(points: Sequence[PointResult], workload: str, concurrency: int) -> PointResult | None:
    """The point of `workload` at `concurrency`, else the nearest measured one."""
    candidates = [p for p in points if p.workload == workload]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda p: (abs(math.log(p.concurrency / concurrency)), -p.concurrency),
    )


def _num(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _rate(point: PointResult | None) -> float | None:
    return None if point is None else point.ops_per_s


def _ratio(point: PointResult | None) -> float | None:
    return None if point is None else point.ratio_to_pgbench


def peak(points: Sequence[PointResult], workload: str) -> PointResult | None:
    """The point of `workload` with the highest rate over the sweep."""
    mine = [p for p in points if p.workload == workload]
    return max(mine, key=lambda p: p.ops_per_s) if mine else None


def pgbench_peak(points: Sequence[PointResult]) -> float | None:
    """pgbench tpcb-like's best tps over the sweep's concurrencies."""
    measured = [p.pgbench_tps for p in points if p.pgbench_tps]
    return max(measured) if measured else None


def _over(point: PointResult | None, base: float | None) -> float | None:
    return None if point is None or not base else point.ops_per_s / base


def _watched_ratio(watched: PointResult | None, charge: PointResult | None) -> float | None:
    """The same-run ratio the run recorded (a median of runs keeps the median of
    those), else the ratio of the two points given."""
    if watched is not None and watched.server.get("ratio_to_base") is not None:
        return float(watched.server["ratio_to_base"])
    return _over(watched, _rate(charge))


def last_line(points: Sequence[PointResult], rss_peak_mb: float | None) -> str:
    """`bench: charge <ops/s> (<ratio>x pgbench), reserve-settle ..., rss <MB> MB,
    peak <ops/s> (<ratio>x pgbench peak), batch <charges/s> (<ratio>x)`.

    charge, reserve-settle and hot at 64 in flight (against pgbench at 64);
    peak: single-call Charge's best over the sweep against pgbench's best over
    the same concurrencies; batch: batch-charge's best (charges/s, 100 per
    request) against pgbench's best; watched: charge with four change-stream
    consumers (issue 17) at 64 in flight against charge there, and the stream's
    lag p99 in that point."""
    charge = pick(points, "charge", THROUGHPUT_AT)
    settle = pick(points, "reserve-settle", THROUGHPUT_AT)
    hot = pick(points, "hot", THROUGHPUT_AT)
    tail = pick(points, "charge", P99_AT)
    watched = pick(points, "charge-watched", THROUGHPUT_AT)
    best, batch, pg_best = (
        peak(points, "charge"),
        peak(points, "batch-charge"),
        pgbench_peak(points),
    )
    return (
        f"bench: charge {_num(_rate(charge), 0)} ({_num(_ratio(charge), 2)}x pgbench),"
        f" reserve-settle {_num(_rate(settle), 0)} ({_num(_ratio(settle), 2)}x),"
        f" hot {_num(_rate(hot), 0)},"
        f" charge p99 {_num(None if tail is None else tail.latency_ms['p99'], 1)} ms,"
        f" rss {_num(rss_peak_mb, 0)} MB,"
        f" peak {_num(_rate(best), 0)} ({_num(_over(best, pg_best), 2)}x pgbench peak),"
        f" batch {_num(_rate(batch), 0)} ({_num(_over(batch, pg_best), 2)}x),"
        f" watched {_num(_rate(watched), 0)} ({_num(_watched_ratio(watched, charge), 2)}x charge),"
        f" stream lag p99 {_num(None if watched is None else watched.server.get('stream_lag_p99_ms'), 0)} ms"
    )


def p99_beside_pgbench(
    points: Sequence[PointResult], pgbench: Mapping[Any, Mapping[str, Any]]
) -> str | None:
    """The charge p99 of the last line beside pgbench tpcb-like's at the same
    number in flight, same run (what the machine gives one small transaction at
    a time from a C client), with the machine's busy share in that point; None
    without both."""
    tail = pick(points, "charge", P99_AT)
    base = pgbench.get(P99_AT) or pgbench.get(str(P99_AT))
    if tail is None or not base or base.get("latency_p99_ms") is None:
        return None
    busy = tail.cpu.get("machine_busy")
    clients = base.get("clients")
    return (
        f"p99 at {P99_AT} in flight: charge {_num(tail.latency_ms['p99'], 1)} ms"
        f" (busy {_num(busy, 0)}% of {(os.cpu_count() or 1) * 100}%), pgbench tpcb-like"
        f" {_num(float(base['latency_p99_ms']), 1)} ms at {_num(clients, 0)} clients"
        f" (p50 {_num(base.get('latency_p50_ms'), 1)} ms), same run"
    )


def cpu_budget(points: Sequence[PointResult], cores: int) -> list[str]:
    """Per workload at its best point: CPU microseconds per operation of the server,
    PostgreSQL and the load generator, and the rate all `cores` would give at that
    cost. On a shared machine the rate is what others leave us; the cost per
    operation is what we spend, and says how far the bars are from the hardware."""
    lines = []
    for workload in dict.fromkeys(p.workload for p in points):
        best = peak(points, workload)
        if best is None or not best.ops_per_s:
            continue
        cost = {
            k: 10_000.0 * v / best.ops_per_s
            for k in ("server", "postgres", "generator", "watchers")
            if (v := best.cpu.get(k)) is not None
        }
        total = sum(cost.values())
        ceiling = f"{cores * 1e6 / total:.0f}/s" if total else "n/a"
        lines.append(
            f"cpu per op: {workload} at {best.concurrency} in flight: "
            + ", ".join(f"{k} {v:.0f} us" for k, v in cost.items())
            + f"; all {cores} cores at this cost: {ceiling}"
        )
    return lines


def _errors(counts: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "0"


def table(points: Sequence[PointResult]) -> str:
    """A compact fixed-width table, one row per point."""
    header = (
        f"{'workload':<15}{'inflight':>8}{'ops/s':>9}{'xpgb':>6}{'p50':>7}{'p95':>7}"
        f"{'p99':>7}{'p99.9':>8}{'retry':>7}{'batch':>6}{'srv%':>6}{'pg%':>5}{'gen%':>6}"
        f"{'busy%':>6}{'rssMB':>6}  errors(unexpected; expected)"
    )
    rows = [header, "-" * len(header)]
    for p in points:
        lat, cpu, srv = p.latency_ms, p.cpu, p.server
        rows.append(
            f"{p.workload:<15}{p.concurrency:>8}{p.ops_per_s:>9.0f}"
            f"{_num(p.ratio_to_pgbench, 2):>6}{_num(lat['p50'], 1):>7}{_num(lat['p95'], 1):>7}"
            f"{_num(lat['p99'], 1):>7}{_num(lat['p99.9'], 1):>8}"
            f"{_num(srv.get('serialization_retries'), 0):>7}{_num(srv.get('mean_batch'), 1):>6}"
            f"{_num(cpu.get('server'), 0):>6}{_num(cpu.get('postgres'), 0):>5}"
            f"{_num(cpu.get('generator'), 0):>6}{_num(cpu.get('machine_busy'), 0):>6}"
            f"{_num(srv.get('rss_peak_mb'), 0):>6}"
            f"  {_errors(p.unexpected_errors)}; {_errors(p.expected_rejections)}"
        )
    return "\n".join(rows)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """One JSON file per run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def chart(
    path: Path, points: Sequence[PointResult], pgbench_tps: dict[int, float], title: str
) -> None:
    """Throughput and p99 against in-flight requests, one line per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    for workload in dict.fromkeys(p.workload for p in points):
        mine = sorted((p for p in points if p.workload == workload), key=lambda p: p.concurrency)
        xs = [p.concurrency for p in mine]
        ax_tp.plot(xs, [p.ops_per_s for p in mine], marker="o", label=workload)
        ax_p99.plot(xs, [p.latency_ms["p99"] for p in mine], marker="o", label=workload)
    if pgbench_tps:
        xs = sorted(pgbench_tps)
        ax_tp.plot(xs, [pgbench_tps[x] for x in xs], "k--", marker="x", label="pgbench tpcb-like")
    ax_tp.set(xscale="log", xlabel="in flight", ylabel="operations/s", title="throughput")
    ax_p99.set(xscale="log", yscale="log", xlabel="in flight", ylabel="ms", title="p99 latency")
    ticks = sorted({p.concurrency for p in points})
    for ax in (ax_tp, ax_p99):
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
