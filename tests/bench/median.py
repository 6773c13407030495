"""`python -m tests.bench.median RUN.json...`: the median of several runs, point by point.

Each figure (ops/s, each percentile, the ratio to pgbench, retries, CPU
shares, RSS) is the median of that figure over the runs, taken on its own,
so a median row need not be any one run's row. The last line is built from
the median rows the same way a run builds it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from tests.bench import report
from tests.bench.stats import PointResult


def _median(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def _median_point(rows: list[dict[str, Any]]) -> PointResult:
    first = rows[0]
    latency = {
        k: _median([r["latency_ms"][k] for r in rows]) or float("nan") for k in first["latency_ms"]
    }
    server = {k: _median([r["server"].get(k) for r in rows]) for k in first["server"]}
    cpu = {
        k: _median([r["cpu_percent_of_one_core"].get(k) for r in rows])
        for k in first["cpu_percent_of_one_core"]
    }
    unexpected: dict[str, int] = {}
    expected: dict[str, int] = {}
    for r in rows:  # errors are summed, not medianed: any of them is a finding
        for total, counts in (
            (unexpected, r["unexpected_errors"]),
            (expected, r["expected_rejections"]),
        ):
            for key, n in counts.items():
                total[key] = total.get(key, 0) + n
    ops_per_s = _median([r["ops_per_s"] for r in rows]) or 0.0
    return PointResult(
        workload=first["workload"],
        concurrency=first["concurrency"],
        duration_s=first["duration_s"],
        ops=int(_median([r["ops"] for r in rows]) or 0),
        ops_per_s=ops_per_s,
        latency_ms=latency,
        by_method={},
        expected_rejections=expected,
        unexpected_errors=unexpected,
        server=server,
        cpu=cpu,
        pgbench_tps=_median([r["pgbench_tps"] for r in rows]),
        ratio_to_pgbench=_median([r["ratio_to_pgbench"] for r in rows]),
    )


def median_of(documents: list[dict[str, Any]]) -> tuple[list[PointResult], float | None]:
    """Median points (in the first run's order) and the median RSS peak."""
    order = [(p["workload"], p["concurrency"]) for p in documents[0]["points"]]
    points = []
    for workload, concurrency in order:
        rows = [
            p
            for d in documents
            for p in d["points"]
            if (p["workload"], p["concurrency"]) == (workload, concurrency)
        ]
        points.append(_median_point(rows))
    return points, _median([d.get("rss_peak_mb") for d in documents])


def main(argv: list[str] | None = None) -> int:
    """Print the median table and last line of the given runs."""
    args = list(argv if argv is not None else sys.argv[1:])
    chart_path = None
    if len(args) >= 2 and args[0] == "--chart":
        chart_path, args = Path(args[1]), args[2:]
    paths = [Path(a) for a in args]
    if not paths:
        print(
            "usage: python -m tests.bench.median [--chart OUT.png] RUN.json [RUN.json ...]",
            file=sys.stderr,
        )
        return 2
    documents = [json.loads(p.read_text()) for p in paths]
    points, rss = median_of(documents)
    print(f"median of {len(documents)} runs: " + ", ".join(d["run_id"] for d in documents))
    for d in documents:
        facts = d["facts"]
        print(
            f"  {d['run_id']} @ {str(d['git']['commit'])[:10]}: loadavg start"
            f" {facts.get('loadavg_start')}, cpu pressure {facts.get('cpu_pressure_start')}"
        )
    print(report.table(points))
    if chart_path is not None:
        concurrencies = {c for d in documents for c in d["pgbench"]}
        tps = {
            int(c): _median([d["pgbench"].get(c, {}).get("tps") for d in documents]) or 0.0
            for c in concurrencies
        }
        title = f"creditledger bench, median of {len(documents)} runs ({documents[-1]['run_id']})"
        report.chart(chart_path, points, tps, title)
        print(f"chart: {chart_path}")
    pgbench = {
        c: {
            "clients": _median([d["pgbench"].get(c, {}).get("clients") for d in documents]),
            "latency_p50_ms": _median(
                [d["pgbench"].get(c, {}).get("latency_p50_ms") for d in documents]
            ),
            "latency_p99_ms": _median(
                [d["pgbench"].get(c, {}).get("latency_p99_ms") for d in documents]
            ),
        }
        for c in {c for d in documents for c in d["pgbench"]}
    }
    if (p99 := report.p99_beside_pgbench(points, pgbench)) is not None:
        print(p99)
    print(report.last_line(points, rss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
