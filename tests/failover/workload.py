"""A bank-style workload on two ledger replicas: deposits (Grant) and payments (Charge).

Each client retries an unknown outcome (UNAVAILABLE, DEADLINE_EXCEEDED, ...)
with the same request and the same idempotency key until the answer is
definitive, as the ledger's callers must (docs/operations.md). Every attempt is
timed, so the runner can tell when each replica served writes again.

What is checked ("acknowledged => present exactly once", never "failed =>
absent": a COMMIT cancelled while it waited for the synchronous standby can
have committed, and the retry replays it):
- every acknowledged Grant's lot exists, and no lot exists that no
  acknowledged Grant made (a duplicate, or an effect of a call never
  acknowledged and never retried);
- per account, `granted` and `settled` equal the sums of the acknowledged
  Grants and Charges;
- after each acknowledged Grant on one replica, GetBalance on the other
  replica (whose reads may go to a standby) shows at least that grant;
- no call ever answered INTERNAL or UNKNOWN with a status of the service.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc

from ledger.storage import hosts
from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_aio

ASSET = "failover_credits"
DEADLINE_S = 5.0
RETRY_PAUSE_S = 0.1
RESOLVE_TIMEOUT_S = 120.0


@dataclass
class Attempt:
    replica: int
    started: float
    ended: float
    ok: bool


@dataclass
class Op:
    kind: str  # "grant" | "charge"
    account: str
    amount: int
    key: str
    acked: bool = False
    refused: bool = False
    lot_id: str = ""


@dataclass
class Workload:
    targets: list[str]
    accounts: int = 12
    clients: int = 8
    seed: int = 1
    ops: list[Op] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    internal: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    running: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.account_ids = [f"bank-{uuid.uuid4().hex[:8]}-{i}" for i in range(self.accounts)]
        self.channels = [
            grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in self.targets
        ]
        self.stubs = [ledger_pb2_grpc.LedgerServiceStub(c) for c in self.channels]
        self._tasks: list[asyncio.Task[None]] = []

    async def close(self) -> None:
        await self.stop()
        for channel in self.channels:
            await channel.close()

    # ---- calls ------------------------------------------------------------------

    async def until_definitive(self, replica: int, method: str, request: Any) -> CallResult[Any]:
        """Same request, same key, until an answer that is not an unknown outcome."""
        give_up = time.monotonic() + RESOLVE_TIMEOUT_S
        while True:
            started = time.monotonic()
            result = await call_aio(getattr(self.stubs[replica], method), request, DEADLINE_S)
            ended = time.monotonic()
            self.codes[result.code.name] += 1
            if method in ("Grant", "Charge"):
                self.attempts.append(Attempt(replica, started, ended, result.ok))
            if result.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and (
                not result.outcome_unknown
            ):
                self.internal.append(f"{method} {result.describe()}: {result.message}")
            if not result.outcome_unknown:
                return result
            if ended > give_up:
                raise TimeoutError(f"{method} still unknown after {RESOLVE_TIMEOUT_S:.0f} s")
            await asyncio.sleep(RETRY_PAUSE_S)

    async def setup(self) -> None:
        for account in self.account_ids:
            created = await self.until_definitive(
                0, "CreateAccount", ledger_pb2.CreateAccountRequest(account_id=account)
            )
            if not created.ok:
                raise RuntimeError(f"CreateAccount {account}: {created.describe()}")

    async def one(self, replica: int) -> None:
        account = self.rng.choice(self.account_ids)
        key = f"fo-{uuid.uuid4()}"
        if self.rng.random() < 0.6:
            op = Op("grant", account, self.rng.randint(1, 100), key)
            request: Any = ledger_pb2.GrantRequest(
                account_id=account, asset=ASSET, amount=op.amount, idempotency_key=key
            )
            method = "Grant"
        else:
            op = Op("charge", account, self.rng.randint(1, 50), key)
            request = ledger_pb2.ChargeRequest(
                account_id=account, asset=ASSET, amount=op.amount, idempotency_key=key
            )
            method = "Charge"
        self.ops.append(op)
        result = await self.until_definitive(replica, method, request)
        op.acked = True
        if not result.ok:
            op.refused = True  # a definitive refusal (e.g. not enough credits): no effect
            return
        if op.kind == "grant":
            op.lot_id = result.body.lot.lot_id
            await self.read_on_other_replica(replica, account, result.body.balance.granted)

    async def read_on_other_replica(self, replica: int, account: str, granted: int) -> None:
        other = (replica + 1) % len(self.stubs)
        read = await self.until_definitive(
            other, "GetBalance", ledger_pb2.GetBalanceRequest(account_id=account, asset=ASSET)
        )
        if read.ok and read.body.balance.granted < granted:
            self.stale_reads.append(
                f"{account}: granted {granted} acknowledged on replica {replica},"
                f" replica {other} read {read.body.balance.granted}"
            )

    async def client(self, index: int) -> None:
        replica = index % len(self.stubs)
        while self.running:
            await self.one(replica)

    def start(self) -> None:
        self.running = True
        self._tasks = [asyncio.create_task(self.client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        """Stop taking new ops; every op in flight is retried until definitive."""
        self.running = False
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks)

    # ---- checks -----------------------------------------------------------------

    def acked_count(self) -> int:
        return sum(op.acked for op in self.ops)

    async def check(self, database_url: str) -> list[str]:
        """Acknowledged => present exactly once. Call with the workload stopped."""
        problems = [f"op never resolved: {op.key}" for op in self.ops if not op.acked]
        conn = await hosts.connect(database_url, 10.0)
        try:
            lots = {
                str(r[0]): r[1]
                for r in await conn.fetch(
                    "SELECT lot_id, account_id FROM lots WHERE asset = $1 AND account_id = ANY($2)",
                    ASSET,
                    self.account_ids,
                )
            }
            balances = {
                r["account_id"]: (r["granted"], r["settled"])
                for r in await conn.fetch(
                    "SELECT account_id, granted, settled FROM balances"
                    " WHERE asset = $1 AND account_id = ANY($2)",
                    ASSET,
                    self.account_ids,
                )
            }
        finally:
            await conn.close()
        granted_ok = [op for op in self.ops if op.kind == "grant" and op.acked and not op.refused]
        acked_lots = {op.lot_id for op in granted_ok}
        problems += [
            f"lost: grant {op.key} (lot {op.lot_id})" for op in granted_ok if op.lot_id not in lots
        ]
        problems += [f"lot {lot} made by no acknowledged grant" for lot in set(lots) - acked_lots]
        for account in self.account_ids:
            want = (
                sum(op.amount for op in granted_ok if op.account == account),
                sum(
                    op.amount
                    for op in self.ops
                    if op.kind == "charge" and op.acked and not op.refused and op.account == account
                ),
            )
            have = balances.get(account, (0, 0))
            if have != want:
                problems.append(
                    f"{account}: (granted, settled) {have} in the database, {want} acknowledged"
                )
        return problems

    def served_again(self, since: float) -> float | None:
        """When every replica had completed a write attempt begun at or after `since`."""
        per_replica = []
        for replica in range(len(self.stubs)):
            ends = [
                a.ended
                for a in self.attempts
                if a.replica == replica and a.ok and a.started >= since
            ]
            if not ends:
                return None
            per_replica.append(min(ends))
        return max(per_replica)
