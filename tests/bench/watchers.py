"""`python -m tests.bench.watchers`: consumers of the change stream during a bench run.

`--watchers N` (tests/bench/cli.py) starts this process beside the load: N
WatchTransactions streams from now over the whole ledger, each reading every
message as it comes, on their own event loop so that their CPU is their own.
On SIGTERM it writes what the consumers saw to `--out` (JSON): transactions
received per stream and the lag of each (receipt time minus commit time),
p50/p99/max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

import grpc
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _watch(
    target: str, lags_s: list[float], counts: list[int], ids: list[list[str]], i: int
) -> None:
    """What a consumer must do, and no more: decode each message, keep its
    position (to resume after), count its transactions and take each one's lag
    (one subtraction per transaction, in seconds; milliseconds at the end), and
    keep the transactions' ids, to compare the streams afterwards."""
    last = ""
    while True:
        req = pb.WatchTransactionsRequest(from_now=not last, after_position=last)
        try:
            async with grpc.aio.insecure_channel(target) as ch:
                async for msg in ledger_pb2_grpc.LedgerServiceStub(ch).WatchTransactions(req):
                    received = time.time()
                    last = msg.position
                    txs = msg.transactions
                    counts[i] += len(txs)
                    ids[i].extend([t.transaction_id for t in txs])
                    lags_s.extend(
                        [
                            received - t.seconds - t.nanos * 1e-9
                            for t in (x.commit_time for x in txs)
                        ]
                    )
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.2)  # resume after the last position


def common_counts(ids: list[list[str]]) -> list[int]:
    """Per stream, the transactions it received from the first one that every
    stream received to the last one that every stream received. The streams open
    "from now" one after the other and are stopped wherever each is in its
    polling, so each should hold the same stretch of one commit order between
    those two, and these counts are equal unless a stream missed or repeated
    something (-1 for all: no stream's first or last transaction is in all)."""
    if not ids or not all(ids):
        return [-1] * len(ids)
    seen = [set(s) for s in ids]
    firsts = [s[0] for s in ids if all(s[0] in other for other in seen)]
    lasts = [s[-1] for s in ids if all(s[-1] in other for other in seen)]
    if not firsts or not lasts:
        return [-1] * len(ids)
    first, last = firsts[0], lasts[0]
    out = []
    for s in ids:
        start, end = s.index(first), s.index(last)
        out.append(end - start + 1 if end >= start else -1)
    return out


async def _main(targets: list[str], n: int, out: Path) -> None:
    lags_s: list[float] = []
    counts = [0] * n
    ids: list[list[str]] = [[] for _ in range(n)]
    tasks = [
        asyncio.create_task(_watch(targets[i % len(targets)], lags_s, counts, ids, i))
        for i in range(n)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()
    lags_ms = [v * 1000 for v in lags_s]
    out.write_text(
        json.dumps(
            {
                "streams": n,
                "received_per_stream": counts,
                "received_in_common_per_stream": common_counts(ids),
                "lag_ms_p50": round(_quantile(lags_ms, 0.5), 1),
                "lag_ms_p99": round(_quantile(lags_ms, 0.99), 1),
                "lag_ms_max": round(max(lags_ms, default=0.0), 1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="HOST:PORT[,HOST:PORT...]")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args()
    asyncio.run(_main(ns.target.split(","), ns.n, ns.out))


if __name__ == "__main__":
    main()
