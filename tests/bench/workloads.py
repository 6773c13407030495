"""The workloads: one coroutine loop per in-flight slot, over the generated stubs.

Each loop owns its request objects and mutates two or three fields per call
(no per-call message construction beyond that, no JSON), draws accounts from
its own seeded RNG and makes idempotency keys unique with a per-slot prefix
and a counter. Every RPC counts as one operation, but a SubmitBatch counts as
many operations as it has commands (batch-charge: 100 Charges per request).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2, status_pb2

ASSET = "credits"
HOT_ACCOUNT = "bench-hot"
# One account with the most live lots an account may hold (LIVE_LOTS_PER_PAIR_MAX):
# the many-lots workload spends from it beside the uniform accounts.
HEAVY_ACCOUNT = "bench-heavy"
HEAVY_LOTS = 1000
HEAVY_LOT_AMOUNT = 10**6
# Far above any balance the bench grants: the mixed workload's deliberate overdrafts.
OVERDRAFT_AMOUNT = 10**14
# A shared pool (issue 18): POOL_MEMBERS members without lots of their own, each with
# a lifetime cap (checked at every spend, never reached), spend from one pool.
POOL_ACCOUNT = "bench-pool"
POOL_MEMBERS = 1000
POOL_MEMBER_CAP = 10**12
WORKLOADS = (
    "charge",
    "charge-watched",
    "reserve-settle",
    "hot",
    "mixed",
    "many-lots",
    "batch-charge",
    "pool",
)
# Issue 17's stream-consumer workload: charge's load while this many whole-ledger
# WatchTransactions consumers read, served by a replica that is never the writer
# (tests/bench/cli.py starts it; docs/operations.md, "Where change streams are served").
WATCHED = {"charge-watched": ("charge", 4)}
BATCH_SIZE = 100  # commands per SubmitBatch of the batch-charge workload
REFUSED_BATCH_PAUSE_S = 0.05
# Business rejections a workload asks for on purpose; every other error is unexpected.
EXPECTED_REJECTIONS: dict[str, frozenset[str]] = {
    "charge": frozenset(),
    "charge-watched": frozenset(),
    "reserve-settle": frozenset(),
    "hot": frozenset(),
    "mixed": frozenset({"FAILED_PRECONDITION/INSUFFICIENT_CREDITS"}),
    "mixed-paced": frozenset({"FAILED_PRECONDITION/INSUFFICIENT_CREDITS"}),
    "many-lots": frozenset(),
    # The writer's queue holds 10,000 commands (queue_max); 256 batches of 100 in
    # flight pass it, and the server sheds the rest with RATE_LIMITED and a retry
    # delay, as designed: the slot waits that long and sends again.
    "batch-charge": frozenset({"RESOURCE_EXHAUSTED/RATE_LIMITED"}),
    "pool": frozenset(),
}

Resp = TypeVar("Resp")


def account_id(index: int) -> str:
    """The id of uniform account number `index`."""
    return f"bench-{index:06d}"


def pool_member(index: int) -> str:
    """The id of pool member number `index`."""
    return f"{POOL_ACCOUNT}:m{index:04d}"


def error_key(error: grpc.aio.AioRpcError) -> str:
    """`CODE/REASON` of a failed RPC, REASON from the google.rpc.ErrorInfo detail."""
    reason = "-"
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason or "-"
    return f"{error.code().name}/{reason}"


@dataclass
class Recorder:
    """Counts and latencies of one worker process for one point.

    Only RPCs that complete inside [window_start, window_end) count as
    operations and give latency samples; errors are counted over the whole
    point, warmup included, because any of them is a finding.
    """

    window_start: float
    window_end: float
    expected: frozenset[str]
    timeout_s: float
    latencies_ms: list[float] = field(default_factory=list)
    by_method: dict[str, int] = field(default_factory=dict)
    expected_rejections: dict[str, int] = field(default_factory=dict)
    unexpected_errors: dict[str, int] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        rpc: Callable[..., Awaitable[Resp]],
        request: Any,
        sample: bool = True,
        weight: int = 1,
    ) -> Resp | None:
        """Run one RPC, time it, and return its response (None when it failed).
        `sample=False`: counted as an operation, its latency left out of the
        percentiles (the many-lots workload reports the p99 of the others).
        `weight`: the operations it counts as (a batch's commands)."""
        started = time.monotonic()
        try:
            response: Resp | None = await rpc(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            response = None
            key = error_key(error)
            if key not in self.expected:
                self.unexpected_errors[key] = self.unexpected_errors.get(key, 0) + 1
                return None
            self.expected_rejections[key] = self.expected_rejections.get(key, 0) + 1
            if weight > 1:
                return None  # a refused batch applied none of its commands: no operations
        finished = time.monotonic()
        if self.window_start <= finished < self.window_end:
            if sample:
                self.latencies_ms.append((finished - started) * 1000.0)
            self.by_method[method] = self.by_method.get(method, 0) + weight
        return response

    def command_failed(self, key: str) -> None:
        """A command of a batch failed (`CODE/REASON`); the RPC itself succeeded."""
        if key in self.expected:
            self.expected_rejections[key] = self.expected_rejections.get(key, 0) + 1
        else:
            self.unexpected_errors[key] = self.unexpected_errors.get(key, 0) + 1


@dataclass
class Slot:
    """What one in-flight slot needs: stub, recorder, RNG, key prefix, stop time."""

    stub: pb_grpc.LedgerServiceAsyncStub
    rec: Recorder
    rng: random.Random
    key_prefix: str
    accounts: int
    stop_at: float
    seq: int = 0
    # Seconds between the starts of this slot's operations (0: as fast as it can);
    # the soak (tests/bench/soak.py) holds a steady rate with it.
    pace_s: float = 0.0

    def key(self) -> str:
        """A fresh idempotency key, unique across the run."""
        self.seq += 1
        return f"{self.key_prefix}{self.seq}"

    def account(self) -> str:
        """A uniformly drawn account id."""
        return account_id(self.rng.randrange(self.accounts))


class Ops:
    """The RPC sequences the workloads are made of, with reused request objects."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.charge_req = pb.ChargeRequest(asset=ASSET, amount=1)
        self.reserve_req = pb.ReserveRequest(asset=ASSET, amount=2)
        self.settle_req = pb.SettleRequest(amount=1, final=True)
        self.release_req = pb.ReleaseRequest(amount=0)
        self.refund_req = pb.RefundRequest(amount=1, reason="bench")
        self.balance_req = pb.GetBalanceRequest(asset=ASSET)
        self.grant_req = pb.GrantRequest(asset=ASSET, amount=3, priority=50, source="promotion")
        self.group_req = pb.ReserveGroupRequest(
            legs=[pb.ReserveGroupLeg(asset=ASSET, amount=2, leg_key="executions"),
                  pb.ReserveGroupLeg(asset=ASSET, amount=1, leg_key="emails")])  # fmt: skip
        # Reservations of recent charges, for the mixed workload's refunds.
        self.refundable: deque[str] = deque(maxlen=64)
        self.batch_req = pb.SubmitBatchRequest(
            commands=[
                pb.BatchCommand(charge=pb.ChargeRequest(asset=ASSET, amount=1))
                for _ in range(BATCH_SIZE)
            ]
        )

    async def batch_charge(self) -> None:
        """One SubmitBatch of BATCH_SIZE Charges of 1 credit on uniform accounts."""
        slot, req = self.slot, self.batch_req
        for command in req.commands:
            command.charge.account_id, command.charge.idempotency_key = slot.account(), slot.key()
        resp = await slot.rec.call(
            "SubmitBatch.Charge", slot.stub.SubmitBatch, req, weight=BATCH_SIZE
        )
        if resp is None:
            await asyncio.sleep(REFUSED_BATCH_PAUSE_S)  # the RetryInfo delay of RATE_LIMITED
            return
        for outcome in resp.outcomes:
            if outcome.HasField("error"):
                slot.rec.command_failed(_outcome_key(outcome.error))

    async def charge(self, account: str, amount: int = 1) -> None:
        """One Charge."""
        slot, req = self.slot, self.charge_req
        req.account_id, req.amount, req.idempotency_key = account, amount, slot.key()
        resp = await slot.rec.call("Charge", slot.stub.Charge, req)
        if resp is not None and resp.reservation.reservation_id:
            self.refundable.append(resp.reservation.reservation_id)

    async def reserve(self, account: str, amount: int) -> str | None:
        """One Reserve; the reservation id, or None when it failed."""
        slot, req = self.slot, self.reserve_req
        req.account_id, req.amount, req.idempotency_key = account, amount, slot.key()
        resp = await slot.rec.call("Reserve", slot.stub.Reserve, req)
        return None if resp is None else resp.reservation.reservation_id

    async def reserve_settle(self, account: str, reserve: int = 2, settle: int = 1) -> None:
        """Reserve, then a final Settle of part of it (the rest goes back)."""
        reservation_id = await self.reserve(account, reserve)
        if reservation_id is None:
            return
        slot, req = self.slot, self.settle_req
        req.reservation_id, req.amount, req.idempotency_key = reservation_id, settle, slot.key()
        await slot.rec.call("Settle", slot.stub.Settle, req)

    async def reserve_release(self, account: str) -> None:
        """Reserve, then Release all of it."""
        reservation_id = await self.reserve(account, 5)
        if reservation_id is None:
            return
        slot, req = self.slot, self.release_req
        req.reservation_id, req.idempotency_key = reservation_id, slot.key()
        await slot.rec.call("Release", slot.stub.Release, req)

    async def refund(self) -> None:
        """Refund 1 credit of a recent charge (a charge when none is left)."""
        if not self.refundable:
            await self.charge(self.slot.account())
            return
        slot, req = self.slot, self.refund_req
        req.reservation_id, req.idempotency_key = self.refundable.popleft(), slot.key()
        await slot.rec.call("Refund", slot.stub.Refund, req)

    async def expiring_grant(self, account: str) -> None:
        """A small promotion that expires in an hour: a new lot, spent before purchases."""
        slot, req = self.slot, self.grant_req
        req.account_id, req.idempotency_key = account, slot.key()
        req.expires_at.FromSeconds(int(time.time()) + 3600)
        await slot.rec.call("Grant", slot.stub.Grant, req)

    async def group(self, first: str, second: str) -> None:
        """An all-or-nothing hold over two accounts, then one leg settled, one released."""
        slot, req = self.slot, self.group_req
        req.legs[0].account_id, req.legs[1].account_id = first, second
        req.idempotency_key = slot.key()
        resp = await slot.rec.call("ReserveGroup", slot.stub.ReserveGroup, req)
        if resp is None:
            return
        executions, emails = resp.group.reservations
        settle = self.settle_req
        settle.reservation_id, settle.amount, settle.idempotency_key = (
            executions.reservation_id, 2, slot.key())  # fmt: skip
        await slot.rec.call("Settle", slot.stub.Settle, settle)
        release = self.release_req
        release.reservation_id, release.idempotency_key = emails.reservation_id, slot.key()
        await slot.rec.call("Release", slot.stub.Release, release)

    async def get_balance(self, account: str) -> None:
        """One GetBalance (a read)."""
        req = self.balance_req
        req.account_id = account
        await self.slot.rec.call("GetBalance", self.slot.stub.GetBalance, req)


async def run_charge(ops: Ops) -> None:
    """1 credit per Charge, uniform over the accounts (email opens)."""
    slot = ops.slot
    while time.monotonic() < slot.stop_at:
        await ops.charge(slot.account())


async def run_reserve_settle(ops: Ops) -> None:
    """Reserve 2, then Settle 1 with final, uniform over the accounts."""
    slot = ops.slot
    while time.monotonic() < slot.stop_at:
        await ops.reserve_settle(slot.account())


async def run_hot(ops: Ops) -> None:
    """Half Charges, half Reserve/Settle pairs, all on ONE account."""
    slot = ops.slot
    while time.monotonic() < slot.stop_at:
        if slot.rng.random() < 0.5:
            await ops.charge(HOT_ACCOUNT)
        else:
            await ops.reserve_settle(HOT_ACCOUNT)


async def run_mixed(ops: Ops) -> None:
    """A realistic blend: mostly charges, holds settled or released, a few refunds,
    reads, expiring promotion grants (lots), two-account group holds, and 1%
    deliberate overdrafts that must fail INSUFFICIENT_CREDITS."""
    slot = ops.slot
    while time.monotonic() < slot.stop_at:
        await _mixed_step(ops)


async def run_mixed_paced(ops: Ops) -> None:
    """The mixed blend at a steady rate: one operation every `slot.pace_s`
    (a slot that falls behind by over a second starts its schedule again
    rather than bursting to catch up)."""
    slot = ops.slot
    next_at = time.monotonic() + slot.rng.random() * slot.pace_s
    while next_at < slot.stop_at:
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            next_at = time.monotonic()
        await _mixed_step(ops)
        next_at += slot.pace_s


async def _mixed_step(ops: Ops) -> None:
    """One operation of the mixed blend."""
    slot = ops.slot
    rng = slot.rng
    draw = rng.random()
    account = slot.account()
    if draw < 0.58:
        await ops.charge(account, rng.randint(1, 5))
    elif draw < 0.78:
        await ops.reserve_settle(account, 5, rng.randint(1, 5))
    elif draw < 0.84:
        await ops.reserve_release(account)
    elif draw < 0.88:
        await ops.refund()
    elif draw < 0.93:
        await ops.get_balance(account)
    elif draw < 0.96:
        await ops.expiring_grant(account)
    elif draw < 0.99:
        await ops.group(account, slot.account())
    else:
        await ops.charge(account, OVERDRAFT_AMOUNT)


async def run_many_lots(ops: Ops) -> None:
    """Uniform 1-credit Charges, and one in eight on the heavy account, which holds
    HEAVY_LOTS lots of HEAVY_LOT_AMOUNT credits each: its charges count as operations
    but only the others' latencies are sampled, so the percentiles say what one
    heavy account costs everybody else (compare with the charge workload)."""
    slot = ops.slot
    heavy = pb.ChargeRequest(account_id=HEAVY_ACCOUNT, asset=ASSET, amount=1)
    while time.monotonic() < slot.stop_at:
        if slot.rng.random() < 0.125:
            heavy.idempotency_key = slot.key()
            await slot.rec.call("Charge", slot.stub.Charge, heavy, sample=False)
        else:
            await ops.charge(slot.account())


async def run_pool(ops: Ops) -> None:
    """1 credit per Charge by a uniformly drawn member of one pool of POOL_MEMBERS:
    every spend draws the pool's lots (a hot pair by design) and checks the
    member's cap (its own row); compare with `charge` and `hot`."""
    slot = ops.slot
    while time.monotonic() < slot.stop_at:
        await ops.charge(pool_member(slot.rng.randrange(POOL_MEMBERS)))


async def run_batch_charge(ops: Ops) -> None:
    """SubmitBatch of 100 Charges of 1 credit each (an event-rate caller's flushes)."""
    slot = ops.slot
    while time.monotonic() < slot.stop_at:
        await ops.batch_charge()


def _outcome_key(status: status_pb2.Status) -> str:
    """`CODE/REASON` of a batch command's google.rpc.Status."""
    reason = "-"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or "-"
    return f"{_CODE_NAMES.get(status.code, str(status.code))}/{reason}"


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

LOOPS: dict[str, Callable[[Ops], Awaitable[None]]] = {
    "charge": run_charge,
    "charge-watched": run_charge,
    "reserve-settle": run_reserve_settle,
    "hot": run_hot,
    "mixed": run_mixed,
    "mixed-paced": run_mixed_paced,
    "many-lots": run_many_lots,
    "batch-charge": run_batch_charge,
    "pool": run_pool,
}
