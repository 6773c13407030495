"""`python -m tests.bench.stream_cost`: the change stream's own CPU per transaction.

The `--watchers` ratio (tests/bench/cli.py) is what issue 17 asks, but on a
shared 2-core machine one point's throughput moves by 2x with what the others
run. This reads a journal already written (a bench database kept with
`--keep-db`) with N whole-ledger streams from its start, on a server doing
nothing else, and divides the CPU of the server, of PostgreSQL and of the
consumers (this process) by the transactions each stream received: the work
is fixed, so contention moves the figures far less than it moves throughput.
Streams that catch up read full pages (WATCH_PAGE_ROWS rows), so this is the
cost per transaction without the per-page costs of a caught-up stream (about
one page per horizon poll): it shows the per-row and per-stream costs.

    python -m tests.bench.stream_cost --database NAME [--streams 4] [--rounds 3]

prints one line per round and the median: server, PostgreSQL and consumer CPU
microseconds per transaction per stream, and the transactions each received.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from tests.bench.server import ServerUnderTest, cpu_seconds, process_tree
from tests.bench.workloads import ASSET


async def _last_position(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xid::text, entry_id FROM entries WHERE bucket <> 'system'"
            " ORDER BY xid DESC, entry_id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    return f"{int(row[0]):020d}-{int(row[1]):020d}"


async def _backends(admin: str, name: str) -> dict[int, float]:
    """CPU seconds of each backend connected to the database (the server's pool):
    not the background workers, which work for every database on a shared server."""

    conn = await asyncpg.connect(admin)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()
    return {int(r["pid"]): cpu_seconds([int(r["pid"])]) for r in rows}


async def _stream(target: str, last: str) -> int:
    """One consumer, as tests/bench/watchers.py does it, from the start to `last`."""
    received = 0
    lags: list[float] = []
    async with grpc.aio.insecure_channel(target) as ch:
        call = ledger_pb2_grpc.LedgerServiceStub(ch).WatchTransactions(
            pb.WatchTransactionsRequest()
        )
        async for msg in call:
            now = time.time()
            txs = msg.transactions
            received += len(txs)
            lags.extend([now - t.seconds - t.nanos * 1e-9 for t in (x.commit_time for x in txs)])
            if msg.position >= last:
                call.cancel()
                break
    return received


async def _round(target: str, last: str, streams: int) -> list[int]:
    return list(await asyncio.gather(*(_stream(target, last) for _ in range(streams))))


async def _follow(target: str, counts: list[int], i: int) -> None:
    """A consumer from now, as tests/bench/watchers.py does it, until cancelled."""
    lags: list[float] = []
    async with grpc.aio.insecure_channel(target) as ch:
        req = pb.WatchTransactionsRequest(from_now=True)
        async for msg in ledger_pb2_grpc.LedgerServiceStub(ch).WatchTransactions(req):
            now = time.time()
            txs = msg.transactions
            counts[i] += len(txs)
            lags.extend([now - t.seconds - t.nanos * 1e-9 for t in (x.commit_time for x in txs)])


async def _live(
    target: str, account: str, streams: int, seconds: float, rate: float, measure: Any
) -> tuple[int, list[int], Any]:
    """`streams` consumers from now while one client charges 1 credit `rate` times
    a second for `seconds`: what a caught-up stream costs per horizon change."""
    counts = [0] * streams
    tasks = [asyncio.create_task(_follow(target, counts, i)) for i in range(streams)]
    await asyncio.sleep(1.0)  # the streams are open and caught up
    charged = 0
    async with grpc.aio.insecure_channel(target) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        start = await measure()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await stub.Charge(
                pb.ChargeRequest(
                    account_id=account, asset=ASSET, amount=1, idempotency_key=uuid.uuid4().hex
                )
            )
            charged += 1
            await asyncio.sleep(max(0.0, t0 + charged / rate - time.monotonic()))
        await asyncio.sleep(0.5)  # the last transactions reach the streams
        end = await measure()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return charged, counts, (start, end)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.stream_cost", description=__doc__)
    ap.add_argument(
        "--database-url",
        default=os.environ.get("LEDGER_BENCH_DATABASE_URL"),
        help="admin URL of the PostgreSQL (default: env LEDGER_BENCH_DATABASE_URL)",
    )
    ap.add_argument("--database", required=True, help="a bench database kept with --keep-db")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--live-s",
        type=float,
        default=0.0,
        help="instead: this many seconds of caught-up streams, without and with them, while"
        " one client charges --rate times a second (the per-horizon-change cost)",
    )
    ap.add_argument("--rate", type=float, default=20.0)
    ns = ap.parse_args()
    if not ns.database_url:
        ap.error("--database-url or LEDGER_BENCH_DATABASE_URL is required")
    admin = ns.database_url
    db_url = admin.rsplit("/", 1)[0] + "/" + ns.database
    last = asyncio.run(_last_position(db_url))
    logs = Path(tempfile.mkdtemp(prefix="stream-cost-"))
    if ns.live_s:
        _live_rounds(ns, admin, db_url, logs)
        return
    results = []
    for n in range(1, ns.rounds + 1):
        # A fresh server each round: a page or message it cached would be free.
        with ServerUnderTest(db_url, logs / f"server-{n}.log") as server:
            srv_pids = process_tree(server.pid)
            pg0 = asyncio.run(_backends(admin, ns.database))
            srv0, me0, t0 = cpu_seconds(srv_pids), time.process_time(), time.monotonic()
            counts = asyncio.run(_round(server.listen, last, ns.streams))
            wall = time.monotonic() - t0
            me = time.process_time() - me0
            srv = cpu_seconds(srv_pids) - srv0
            # Backends opened during the round count whole.
            pg1 = asyncio.run(_backends(admin, ns.database))
            pg = sum(max(0.0, v - pg0.get(pid, 0.0)) for pid, v in pg1.items())
        per = 1e6 / (counts[0] * ns.streams)
        results.append((srv * per, pg * per, me * per))
        print(
            f"round {n}: {ns.streams} streams x {counts[0]} transactions in {wall:.1f} s;"
            f" per transaction per stream: server {srv * per:.1f} us,"
            f" postgres {pg * per:.1f} us, consumer {me * per:.1f} us"
            f" (all received: {counts}; load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    med = [statistics.median(r[i] for r in results) for i in range(3)]
    print(
        f"median of {ns.rounds}: server {med[0]:.1f} us, postgres {med[1]:.1f} us,"
        f" consumer {med[2]:.1f} us per transaction per stream"
    )


def _live_rounds(ns: argparse.Namespace, admin: str, db_url: str, logs: Path) -> None:
    account = asyncio.run(_an_account(db_url))
    per_round: dict[int, list[tuple[float, float, float]]] = {0: [], ns.streams: []}
    for n in range(1, ns.rounds + 1):
        for streams in (0, ns.streams) if n % 2 else (ns.streams, 0):
            with ServerUnderTest(db_url, logs / f"live-{n}-{streams}.log") as server:
                srv_pids = process_tree(server.pid)

                async def measure() -> tuple[float, dict[int, float], float]:
                    return (
                        cpu_seconds(srv_pids),  # noqa: B023 - called within this iteration
                        await _backends(admin, ns.database),
                        time.process_time(),
                    )

                charged, counts, (a, b) = asyncio.run(
                    _live(server.listen, account, streams, ns.live_s, ns.rate, measure)
                )
            srv = b[0] - a[0]
            pg = sum(max(0.0, v - a[1].get(pid, 0.0)) for pid, v in b[1].items())
            me = b[2] - a[2]
            # Per charge: a round that could not keep the rate is still comparable.
            per_round[streams].append((srv / charged, pg / charged, me / charged))
            print(
                f"live round {n}, {streams} streams: {charged} charges in {ns.live_s:.0f} s,"
                f" received {counts}; CPU ms per second: server {1e3 * srv / ns.live_s:.1f},"
                f" postgres {1e3 * pg / ns.live_s:.1f}, client+consumers {1e3 * me / ns.live_s:.1f}"
                f" (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in per_round.items()}
    extra = [1e6 * (med[ns.streams][i] - med[0][i]) for i in range(3)]
    print(
        f"median of {ns.rounds}: CPU per charge without streams: server {1e6 * med[0][0]:.0f} us,"
        f" postgres {1e6 * med[0][1]:.0f} us, client {1e6 * med[0][2]:.0f} us;"
        f" {ns.streams} caught-up streams add per charge at up to {ns.rate:.0f}/s"
        f" (a page per horizon change): server {extra[0]:.0f} us, postgres {extra[1]:.0f} us,"
        f" consumers {extra[2]:.0f} us"
    )


async def _an_account(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT account_id FROM balances WHERE asset = $1 ORDER BY available DESC LIMIT 1",
            ASSET,
        )
    finally:
        await conn.close()
    return str(row[0])


if __name__ == "__main__":
    main()
