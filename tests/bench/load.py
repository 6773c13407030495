"""The load generator: worker processes, each one uvloop event loop over gRPC channels.

The parent talks to each worker over a Pipe: `setup` creates and funds a slice
of the accounts, `run` drives one point and answers with a `WorkerReport`,
`stop` ends the process. Workers are started with the `spawn` method, so no
gRPC state crosses a fork. All times are `time.monotonic()`, which is one
clock for every process of the machine, so the parent can give every worker
the same measurement window.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
import uvloop
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc as pb_grpc

from tests.bench.workloads import (
    ASSET,
    EXPECTED_REJECTIONS,
    HEAVY_ACCOUNT,
    HEAVY_LOT_AMOUNT,
    HEAVY_LOTS,
    HOT_ACCOUNT,
    LOOPS,
    POOL_ACCOUNT,
    POOL_MEMBER_CAP,
    POOL_MEMBERS,
    Ops,
    Recorder,
    Slot,
    account_id,
    error_key,
    pool_member,
)

UNIFORM_GRANT = 1_000_000
HOT_GRANT = 10**12
SETUP_IN_FLIGHT = 32
SETUP_ATTEMPTS = 20


@dataclass(frozen=True)
class Plan:
    """What one worker runs for one point."""

    workload: str
    slots: int
    first_slot: int
    start_at: float
    warmup_s: float
    duration_s: float
    seed: int
    key_prefix: str
    accounts: int
    timeout_s: float
    pace_s: float = 0.0  # per slot, for the paced workloads (0: unpaced)


@dataclass
class WorkerReport:
    """A worker's counts for one point (latencies of in-window RPCs, in ms)."""

    latencies_ms: list[float] = field(default_factory=list)
    by_method: dict[str, int] = field(default_factory=dict)
    expected_rejections: dict[str, int] = field(default_factory=dict)
    unexpected_errors: dict[str, int] = field(default_factory=dict)


def open_stubs(target: str, channels: int) -> list[pb_grpc.LedgerServiceAsyncStub]:
    """`channels` separate HTTP/2 connections (a local subchannel pool each) to each
    address of `target` (a comma list: the replicas), interleaved, so that the
    in-flight slots spread evenly over the replicas."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    addresses = [a for a in target.split(",") if a]
    return [
        pb_grpc.LedgerServiceStub(grpc.aio.insecure_channel(address, options=options))
        for _ in range(channels)
        for address in addresses
    ]


async def _retrying(call: Any, request: Any, tolerated: str = "") -> None:
    """Setup RPCs retry while the server warms up; `tolerated` (CODE/REASON) is success."""
    for attempt in range(SETUP_ATTEMPTS):
        try:
            await call(request, timeout=30)
            return
        except grpc.aio.AioRpcError as error:
            key = error_key(error)
            if key == tolerated:
                return
            if attempt == SETUP_ATTEMPTS - 1 or error.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.ABORTED,
            ):
                raise RuntimeError(f"bench setup failed: {key}: {error.details()}") from error
            await asyncio.sleep(0.2 * (attempt + 1))


async def _create_funded(stub: pb_grpc.LedgerServiceAsyncStub, account: str, amount: int) -> None:
    await _retrying(
        stub.CreateAccount,
        pb.CreateAccountRequest(account_id=account),
        tolerated="ALREADY_EXISTS/ACCOUNT_EXISTS",
    )
    grant = pb.GrantRequest(
        account_id=account, asset=ASSET, amount=amount, idempotency_key=f"bench-grant-{account}"
    )
    await _retrying(stub.Grant, grant)


async def _schedule(stub: pb_grpc.LedgerServiceAsyncStub, account: str) -> None:
    """`--schedules`: a monthly allowance on the account (its pair's every batch
    and read then walks an active schedule and loads its live lots)."""
    await _retrying(
        stub.CreateGrantSchedule,
        pb.CreateGrantScheduleRequest(
            account_id=account,
            asset=ASSET,
            amount=1000,
            period_unit=pb.GrantSchedule.PERIOD_UNIT_MONTH,
            period_count=1,
            rollover=pb.Rollover(cap_percent=50),
            idempotency_key=f"bench-schedule-{account}",
        ),
    )


async def setup_accounts(
    stubs: list[pb_grpc.LedgerServiceAsyncStub],
    indexes: range,
    with_hot: bool,
    schedules: bool = False,
) -> None:
    """Create and fund the uniform accounts in `indexes` (and the hot one); with
    `schedules`, each gets a monthly grant schedule too."""
    queue: list[tuple[str, int]] = [(account_id(i), UNIFORM_GRANT) for i in indexes]
    if with_hot:
        queue.append((HOT_ACCOUNT, HOT_GRANT))

    async def drain(stub: pb_grpc.LedgerServiceAsyncStub) -> None:
        while queue:
            account, amount = queue.pop()
            await _create_funded(stub, account, amount)
            if schedules:
                await _schedule(stub, account)

    await asyncio.gather(*(drain(stubs[i % len(stubs)]) for i in range(SETUP_IN_FLIGHT)))
    if with_hot:
        await setup_heavy(stubs)
        await setup_pool(stubs)


async def setup_pool(stubs: list[pb_grpc.LedgerServiceAsyncStub]) -> None:
    """The pool, funded like the hot account, and its members, each capped."""
    await _create_funded(stubs[0], POOL_ACCOUNT, HOT_GRANT)
    todo = list(range(POOL_MEMBERS))

    async def drain(stub: pb_grpc.LedgerServiceAsyncStub) -> None:
        while todo:
            member = pool_member(todo.pop())
            await _retrying(
                stub.CreateAccount,
                pb.CreateAccountRequest(account_id=member, parent_id=POOL_ACCOUNT),
                tolerated="ALREADY_EXISTS/ACCOUNT_EXISTS",
            )
            cap = pb.SetMemberCapRequest(
                account_id=member,
                asset=ASSET,
                window=pb.CAP_WINDOW_LIFETIME,
                cap=POOL_MEMBER_CAP,
                idempotency_key=f"bench-cap-{member}",
            )
            await _retrying(stub.SetMemberCap, cap)

    await asyncio.gather(*(drain(stubs[i % len(stubs)]) for i in range(SETUP_IN_FLIGHT)))


async def setup_heavy(stubs: list[pb_grpc.LedgerServiceAsyncStub]) -> None:
    """The heavy account: HEAVY_LOTS lots, each its own Grant (keys make it idempotent)."""
    await _retrying(
        stubs[0].CreateAccount,
        pb.CreateAccountRequest(account_id=HEAVY_ACCOUNT),
        tolerated="ALREADY_EXISTS/ACCOUNT_EXISTS",
    )
    todo = list(range(HEAVY_LOTS))

    async def drain(stub: pb_grpc.LedgerServiceAsyncStub) -> None:
        while todo:
            i = todo.pop()
            grant = pb.GrantRequest(
                account_id=HEAVY_ACCOUNT,
                asset=ASSET,
                amount=HEAVY_LOT_AMOUNT,
                priority=i % 97,
                idempotency_key=f"bench-heavy-{i}",
            )
            await _retrying(stub.Grant, grant)

    await asyncio.gather(*(drain(stubs[i % len(stubs)]) for i in range(SETUP_IN_FLIGHT)))


async def run_plan(stubs: list[pb_grpc.LedgerServiceAsyncStub], plan: Plan) -> WorkerReport:
    """Drive `plan.slots` in-flight loops until the window closes; report what they saw."""
    window_start = plan.start_at + plan.warmup_s
    rec = Recorder(
        window_start=window_start,
        window_end=window_start + plan.duration_s,
        expected=EXPECTED_REJECTIONS[plan.workload],
        timeout_s=plan.timeout_s,
    )
    loop_fn = LOOPS[plan.workload]
    ops = []
    for n in range(plan.slots):
        slot_no = plan.first_slot + n
        slot = Slot(
            stub=stubs[slot_no % len(stubs)],
            rec=rec,
            rng=random.Random(f"{plan.seed}/{plan.key_prefix}/{slot_no}"),
            key_prefix=f"{plan.key_prefix}-{slot_no}-",
            accounts=plan.accounts,
            stop_at=rec.window_end,
            pace_s=plan.pace_s,
        )
        ops.append(Ops(slot))
    delay = plan.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    await asyncio.gather(*(loop_fn(o) for o in ops))
    return WorkerReport(
        latencies_ms=rec.latencies_ms,
        by_method=rec.by_method,
        expected_rejections=rec.expected_rejections,
        unexpected_errors=rec.unexpected_errors,
    )


async def _serve(conn: Connection, target: str, channels: int) -> None:
    stubs = open_stubs(target, channels)
    loop = asyncio.get_running_loop()
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            return
        if command == "setup":
            indexes, with_hot, schedules = arg
            await setup_accounts(stubs, indexes, with_hot, schedules)
            conn.send(("ok", None))
        elif command == "run":
            conn.send(("ok", await run_plan(stubs, arg)))
        else:
            raise ValueError(f"unknown command {command!r}")


def worker_main(conn: Connection, target: str, channels: int) -> None:
    """Entry point of a worker process."""
    try:
        uvloop.run(_serve(conn, target, channels))
    except BaseException as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        raise


class Workers:
    """The pool of load-generator processes, driven synchronously by the parent."""

    def __init__(self, count: int, target: str, channels: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(count):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child_end, target, channels), daemon=True)
            proc.start()
            self._conns.append(parent_end)
            self.processes.append(proc)

    @property
    def pids(self) -> list[int]:
        """The worker processes' pids (for CPU accounting)."""
        return [p.pid for p in self.processes if p.pid is not None]

    def _gather(self, conns: list[Connection], timeout_s: float) -> list[Any]:
        answers = []
        for conn in conns:
            if not conn.poll(timeout_s):
                raise TimeoutError("a bench worker did not answer in time")
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"bench worker failed: {value}")
            answers.append(value)
        return answers

    def setup(self, accounts: int, timeout_s: float = 600.0, schedules: bool = False) -> None:
        """Create and fund accounts 0..accounts-1 (split over the workers) and the hot one."""
        count = len(self._conns)
        for n, conn in enumerate(self._conns):
            conn.send(("setup", (range(n, accounts, count), n == 0, schedules)))
        self._gather(self._conns, timeout_s)

    def start(self, plan_for: list[Plan]) -> list[Connection]:
        """Send one plan per worker (zero-slot plans are skipped); the connections to await."""
        busy = []
        for conn, plan in zip(self._conns, plan_for, strict=True):
            if plan.slots > 0:
                conn.send(("run", plan))
                busy.append(conn)
        return busy

    def collect(self, busy: list[Connection], timeout_s: float) -> list[WorkerReport]:
        """The reports of the workers `start` returned."""
        reports: list[WorkerReport] = self._gather(busy, timeout_s)
        return reports

    def close(self) -> None:
        """Stop every worker."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for proc in self.processes:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
