"""`python -m tests.failover [--scenarios kill,hang,...]`: see tests/failover/run.py and docs/operations.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.failover.cluster import missing_tools
from tests.failover.run import ALL_SCENARIOS, run, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.failover", description=__doc__)
    parser.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help=f"comma-separated, in order, from {','.join(ALL_SCENARIOS)}",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("failover-results"))
    parser.add_argument(
        "--server-source",
        type=Path,
        default=None,
        help="run the ledger package found in this directory (e.g. `git archive main ledger |"
        " tar -x -C DIR`) instead of the work tree's: how a fix is shown to matter"
        " (no read endpoint then)",
    )
    parser.add_argument(
        "--dcs",
        choices=["etcd", "etcd3"],
        default="etcd",
        help="Patroni's DCS client: etcd (v2 API, the default) or etcd3, whose Patroni 3.0.2"
        " client lets a hung primary take the leader key back when it wakes (docs/operations.md)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    unknown = set(scenarios) - set(ALL_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    why = missing_tools()
    if why:
        print(f"failover: skipped: {why}")
        return 0
    outcomes, acked = run(
        args.results_dir / time.strftime("%Y%m%dT%H%M%S"),
        scenarios,
        args.server_source.resolve() if args.server_source else None,
        args.dcs,
    )
    for o in outcomes:
        print(
            f"{o.name}: failover {o.failover_s:.1f}s recovery {o.recovery_s:.2f}s"
            f" problems {len(o.problems)}"
        )
    print(summary(outcomes, acked), flush=True)
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
