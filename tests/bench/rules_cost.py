"""`python -m tests.bench.rules_cost`: the writer's Python per charge, alone.

A charge's share of a transaction in the writer's own code (rules.apply, the
request's fingerprint and its stored outcome: Writer._apply_some) on an
in-memory working set of 2,000 funded accounts: no gRPC, no PostgreSQL, no
other process. End-to-end figures on the shared 2-core machine move by 10-20%
between runs; this moves by a few percent, so it shows changes of a few
microseconds that the bench cannot (docs/performance.md, round five).

    python -m tests.bench.rules_cost [--charges 700] [--rounds 15] [--profile]

prints the median microseconds per charge over the rounds (each a fresh
working set and one transaction of --charges charges); --profile adds the
cProfile top 30 by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from ledger.domain import commands as c
from ledger.domain.model import Balance, Lot
from ledger.domain.workingset import WorkingSet
from ledger.service.clock import SystemClock
from ledger.service.outcomes import Outcome
from ledger.service.writer import Writer

ACCOUNTS = 2000
ASSET = "crm"
FUNDS = 1_000_000


def _working_set(writer: Writer, accounts: list[str], now: datetime) -> WorkingSet:
    ws = writer._working_set()
    for a in accounts:
        ws.accounts.add(a)
        ws.ancestors[a] = ()
        ws.balances[(a, ASSET)] = Balance(a, ASSET, available=FUNDS, granted=FUNDS, version=1)
        ws.add_lot(Lot(str(uuid.uuid4()), a, ASSET, FUNDS, FUNDS, 100, "", None, now))
    return ws


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.rules_cost")
    ap.add_argument("--charges", type=int, default=700, help="charges per transaction")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    rng = random.Random(2026)
    accounts = [f"a{i}" for i in range(ACCOUNTS)]
    granted_at = datetime.now(UTC) - timedelta(days=1)
    writer = Writer(None, SystemClock())  # type: ignore[arg-type]  # no store: rules only
    cmds: list[c.MutatingCommand] = [
        c.Charge("bench", uuid.UUID(int=rng.getrandbits(128)).hex, rng.choice(accounts), ASSET, 1)
        for _ in range(args.charges)
    ]
    order = list(range(len(cmds)))

    def one(profile: cProfile.Profile | None = None) -> float:
        ws = _working_set(writer, accounts, granted_at)
        results: list[tuple[Outcome, bool] | None] = [None] * len(cmds)
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        writer._apply_some(ws, cmds, order, results, {})
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - started
        if any(r is None for r in results):
            raise SystemExit("a charge got no outcome")
        return elapsed

    per_charge_us = [1e6 * one() / len(cmds) for _ in range(args.rounds)]
    print(
        f"rules_cost: {statistics.median(per_charge_us):.1f} us per charge (median of"
        f" {args.rounds} transactions of {len(cmds)} charges; min"
        f" {min(per_charge_us):.1f}, max {max(per_charge_us):.1f})"
    )
    if args.profile:
        profile = cProfile.Profile()
        for _ in range(3):
            one(profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
