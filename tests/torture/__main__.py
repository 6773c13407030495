"""`python -m tests.torture --seconds N --seed S [--database-url URL]`: see docs/torture.md."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

from tests.torture.history import read_header
from tests.torture.runner import RunConfig, run


def parse_args(argv: list[str]) -> RunConfig:
    parser = argparse.ArgumentParser(prog="python -m tests.torture", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=120, help="length of the load + faults phase"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the workload and fault schedule"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="an existing PostgreSQL (superuser); a fresh database is made in it. "
        "Without it a private cluster is started, which also allows PostgreSQL restarts.",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument(
        "--servers",
        type=int,
        default=3,
        help="server processes on the one database (one elected writer, the others forward)",
    )
    parser.add_argument(
        "--fronts",
        type=int,
        default=1,
        help="run each server as `ledger serve --fronts N` (N processes on its port, "
        "one of them possibly the writer); adds the front_kill fault",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("torture-results"))
    parser.add_argument(
        "--keep-history", action="store_true", help="write the history even with 0 violations"
    )
    parser.add_argument("--no-faults", action="store_true", help="load only (a baseline)")
    parser.add_argument(
        "--replay", type=Path, default=None, help="a history.jsonl: rerun its seed and settings"
    )
    parser.add_argument(
        "--server-source",
        type=Path,
        default=None,
        help="run the ledger package found in this directory (e.g. `git archive HEAD ledger | tar -x -C DIR`) "
        "instead of the work tree's, so that edits in progress are not what is tested",
    )
    args = parser.parse_args(argv)
    cfg = RunConfig(
        seconds=args.seconds,
        seed=args.seed if args.seed is not None else random.randrange(1, 2**31),
        database_url=args.database_url,
        clients=args.clients,
        accounts=args.accounts,
        servers=args.servers,
        fronts=args.fronts,
        results_dir=args.results_dir,
        keep_history=args.keep_history,
        faults=not args.no_faults,
        server_source=args.server_source.resolve() if args.server_source else None,
    )
    if args.replay is not None:
        header = read_header(args.replay)
        cfg.seed, cfg.seconds = int(header["seed"]), float(header["seconds"])
        cfg.clients, cfg.accounts = int(header["clients"]), int(header["accounts"])
        cfg.servers = int(header["servers"])
        cfg.fronts = int(header.get("fronts", 1))
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    report = asyncio.run(run(cfg))
    *details, fault_line = report.lines
    for line in details:
        print(line)
    if report.history_path is not None:
        print(
            f"history: {report.history_path} (rerun: python -m tests.torture --replay {report.history_path})"
        )
    # For scripts: the faults by kind, then the summary as the very last line.
    print(fault_line)
    print(report.summary, flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
