"""A ledger database holding years of history, then Charges against it next to a fresh one.

    python -m tests.bench.bigdata --entries 50000000 --keys 20000000

On a PostgreSQL cluster of its own (as `make soak`: initdb into a temporary
directory, port 25497), it creates two databases, `fresh` and `big`, migrates
both, and fills `big` with set-based `INSERT ... SELECT generate_series`, in
chunks whose time it prints:

* entries: balanced two-leg grants (account `hist-N` and `@issuance`) spread
  over a year, through the real `entries_account` index;
* idempotency keys of caller `hist`, created over the last 7 days, each
  expiring 7 days after it was created (so all are live, in the real
  partitions), with an outcome the size of a Charge's;
* closed reservations.

Then, for each database, it starts `ledger serve` and runs the bench's charge
workload against it (tests/bench, `--target`), and prints both results.
The history is not meant for `ledger verify` (no lots or balances for the
`hist-` accounts); it is there to make the tables and indexes large.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from ledger.storage import idempotency as idem
from ledger.storage.pool import migrate
from tests.bench.server import ServerUnderTest
from tests.bench.soak import own_cluster, say

REPO = Path(__file__).resolve().parents[2]

_ENTRIES = """
INSERT INTO entries (transaction_id, account_id, asset, amount, movement, bucket, created_at)
SELECT md5('t' || (g / 2))::uuid,
       CASE WHEN g % 2 = 0 THEN 'hist-' || ((g / 2) % $3) ELSE '@issuance' END,
       'crm_credits', CASE WHEN g % 2 = 0 THEN 5 ELSE -5 END, 'grant',
       CASE WHEN g % 2 = 0 THEN 'available' ELSE 'system' END,
       now() - interval '365 days' + (g * $4::float8) * interval '1 second'
FROM generate_series($1::int8, $2::int8) AS g
"""

# About the size of a stored Charge outcome (a reservation and a balance).
_OUTCOME = json.dumps(
    {
        "reservation": {
            "reservation": {
                "reservation_id": "00000000-0000-0000-0000-000000000000",
                "account_id": "hist-0",
                "asset": "crm_credits",
                "amount": 5,
                "settled": 5,
                "released": 0,
                "refunded": 0,
                "state": "closed",
                "created_at": "2026-12-04T00:00:00+00:00",
                "expires_at": "2026-12-04T00:00:00+00:00",
                "metadata": {},
                "group_id": "",
                "leg_key": "",
            },
            "balance": {"available": 100, "reserved": 0, "granted": 1000, "settled": 900},
        }
    }
)

_KEYS = """
INSERT INTO idempotency (caller, key, method, request_hash, outcome, created_at, expires_at)
SELECT 'hist', md5('k' || g), 'Charge', decode(md5(g::text), 'hex'), $3::jsonb, t, t + interval '7 days'
FROM (SELECT g, now() - interval '7 days' + interval '1 hour' + (g * $4::float8) * interval '1 second' AS t
      FROM generate_series($1::int8, $2::int8) AS g) AS s
"""

_RESERVATIONS = """
INSERT INTO reservations (reservation_id, account_id, asset, amount, settled, released, refunded,
    state, created_at, expires_at, metadata, group_id, leg_key, allocations)
SELECT md5('r' || g)::uuid, 'hist-' || (g % $3), 'crm_credits', 5, 5, 0, 0, 'closed',
       now() - interval '30 days', now() - interval '29 days', '{}'::jsonb, NULL, '',
       jsonb_build_array(jsonb_build_array(md5('l' || g)::uuid, 5, 5, 0, 0))
FROM generate_series($1::int8, $2::int8) AS g
"""


async def _chunked(
    conn: asyncpg.Connection, what: str, sql: str, total: int, chunk: int, *extra: object
) -> list[float]:
    seconds = []
    for lo in range(0, total, chunk):
        hi = min(total, lo + chunk) - 1
        started = time.monotonic()
        await conn.execute(sql, lo, hi, *extra, timeout=7200)
        seconds.append(time.monotonic() - started)
        say(
            f"bigdata: {what} {hi + 1:>11,d} / {total:,d}: {seconds[-1]:.0f} s for {hi - lo + 1:,d}"
        )
    return seconds


async def fill(
    url: str, entries: int, keys: int, reservations: int, chunk: int
) -> dict[str, object]:
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        now = datetime.now(UTC)
        await idem.maintain(conn, now, now + timedelta(days=8), timedelta(hours=12), drop=False)
        accounts = max(1, entries // 200)
        t_entries = await _chunked(
            conn, "entries", _ENTRIES, entries, chunk, accounts, 365 * 86400 / max(entries, 1)
        )
        t_keys = await _chunked(
            conn,
            "idempotency keys",
            _KEYS,
            keys,
            chunk,
            _OUTCOME,
            (7 * 86400 - 7200) / max(keys, 1),
        )
        t_res = await _chunked(conn, "reservations", _RESERVATIONS, reservations, chunk, accounts)
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE", timeout=7200)
        vacuum_s = time.monotonic() - started
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
    finally:
        await conn.close()
    return {
        "entries": entries,
        "keys": keys,
        "reservations": reservations,
        "seconds_per_10m_entries": sum(t_entries) / max(entries, 1) * 10_000_000,
        "seconds_per_10m_keys": sum(t_keys) / max(keys, 1) * 10_000_000,
        "seconds_reservations": sum(t_res),
        "vacuum_analyze_s": vacuum_s,
        "database_size": size,
    }


def bench(url: str, out: Path, name: str, args: argparse.Namespace) -> str:
    """The bench's charge workload against `ledger serve` on `url`; its last line."""
    # Migrations the server would run at start (a schema newer than the fill's),
    # done before it, so that its readiness timeout does not include them.
    asyncio.run(migrate(url))
    with ServerUnderTest(url, out / f"bigdata-{name}-server.log") as server:
        done = subprocess.run(
            [sys.executable, "-m", "tests.bench", "--target", server.listen,
             "--target-metrics", server.metrics, "--target-pid", str(server.pid),
             "--workloads", "charge", "--concurrency", args.concurrency,
             "--duration-s", str(args.duration_s), "--accounts", str(args.accounts),
             "--no-pgbench", "--out-dir", str(out / name)],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
    (out / f"bigdata-{name}-bench.log").write_text(done.stdout + done.stderr)
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    for line in table:
        say(f"bigdata: {name}: {line}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]


async def _create(admin: str, name: str) -> str:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.bigdata", description=__doc__)
    p.add_argument("--entries", type=int, default=50_000_000)
    p.add_argument("--keys", type=int, default=20_000_000)
    p.add_argument("--reservations", type=int, default=3_000_000)
    p.add_argument("--chunk", type=int, default=5_000_000)
    p.add_argument("--concurrency", default="64")
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--port", type=int, default=25497)
    p.add_argument("--out-dir", default="bench-results")
    p.add_argument("--rounds", type=int, default=1, help="fresh/big bench pairs, alternated")
    p.add_argument(
        "--wait-for",
        default="",
        help="after the fill, wait until this file exists before benching (to bench on a"
        " quiet machine after a long fill beside other work)",
    )
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with own_cluster(args.port) as admin:
        fresh = asyncio.run(_create(admin, "fresh"))
        big = asyncio.run(_create(admin, "big"))
        asyncio.run(migrate(fresh))
        started = time.monotonic()
        facts = asyncio.run(fill(big, args.entries, args.keys, args.reservations, args.chunk))
        facts["fill_s"] = time.monotonic() - started
        say("bigdata: " + json.dumps(facts))
        if args.wait_for:
            say(f"bigdata: filled; waiting for {args.wait_for} to exist before benching")
            while not Path(args.wait_for).exists():
                time.sleep(5)
        results = {}
        for r in range(args.rounds):  # alternate, so that drift in the machine hits both
            for name, url in (("fresh", fresh), ("big", big)):
                label = name if args.rounds == 1 else f"{name}-{r + 1}"
                results[label] = bench(url, out, label, args)
    for name, line in results.items():
        say(f"bigdata: {name}: {line}")
    (out / "bigdata.json").write_text(json.dumps({"facts": facts, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
