"""The clients: random Reserve / Settle / Release / Refund / Charge / Grant / ReserveGroup.

Each operation gets a fresh idempotency key. A call whose outcome is unknown
(UNAVAILABLE, DEADLINE_EXCEEDED, a reset) is retried with the same key, on any
server, a bounded number of times, the way a real caller would; what is still
unknown after that is resolved after healing by replaying the key. Every
definitive answer is recorded on its Op; the checker works from those records.

Some operations are meant to fail (a ghost account, a made-up reservation id,
an amount larger than what is there), and some are probes of idempotency: the
same request again (must replay the first outcome), the same key with another
amount (must be IDEMPOTENCY_KEY_REUSED), the same request twice at once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc
from google.protobuf.message import Message

from tests.torture.history import Attempt, Op, Violation
from tests.torture.rpc import CHANNEL_OPTIONS, CallResult, call_aio

MAX_ATTEMPTS = 10
RETRY_BUDGET_S = 40.0
IMPATIENT_SHARE = 0.2
LONG_TTL_S = 3600
# The largest amount a caller may send (the contract's 10^15).
AMOUNT_MAX = 10**15

METHOD_BY_KIND = {
    "grant": "Grant",
    "reserve": "Reserve",
    "reserve_group": "ReserveGroup",
    "settle": "Settle",
    "release": "Release",
    "refund": "Refund",
    "charge": "Charge",
}

# Definitive refusals each kind may legitimately get, by (code, reason).
ALLOWED_REFUSALS: dict[str, set[tuple[str, str]]] = {
    "grant": set(),
    "reserve": {("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS")},
    "reserve_group": {("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS")},
    "charge": {("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS")},
    "settle": {
        ("FAILED_PRECONDITION", "RESERVATION_CLOSED"),
        ("FAILED_PRECONDITION", "RESERVATION_EXPIRED"),
        ("FAILED_PRECONDITION", "AMOUNT_EXCEEDS_REMAINING"),
    },
    "release": {
        ("FAILED_PRECONDITION", "RESERVATION_CLOSED"),
        ("FAILED_PRECONDITION", "RESERVATION_EXPIRED"),
        ("FAILED_PRECONDITION", "AMOUNT_EXCEEDS_REMAINING"),
    },
    "refund": {("FAILED_PRECONDITION", "AMOUNT_EXCEEDS_SETTLED")},
}
EXPECTED_BY_PURPOSE: dict[str, set[tuple[str, str]]] = {
    "ghost_account": {("NOT_FOUND", "ACCOUNT_NOT_FOUND")},
    # A made-up id may also be refused as malformed.
    "fake_reservation": {("NOT_FOUND", "RESERVATION_NOT_FOUND")},
    "feature_probe": {("UNIMPLEMENTED", "")},
}


@dataclass
class ReservationInfo:
    """What the clients know of a reservation (a guess: others act on it too)."""

    reservation_id: str
    account: str
    asset: str
    amount: int
    expires_at: float
    remaining_guess: int
    settled_guess: int = 0


@dataclass
class WorkloadConfig:
    seed: int
    clients: int = 16
    accounts: int = 200
    assets: tuple[str, ...] = ("crm_credits", "sms_credits", "image_opens", "api_calls")
    deadline_s: float = 3.0
    hot_accounts: int = 8


@dataclass
class Features:
    """Which optional parts of the contract the server under test implements."""

    lots: bool = False
    groups: bool = False


@dataclass
class Stats:
    replay_probes: int = 0
    reuse_probes: int = 0
    duplicate_probes: int = 0
    replayed_after_retry: int = 0
    transport_errors: int = 0


class Workload:
    """Shared state of all clients plus the operation executor."""

    def __init__(self, cfg: WorkloadConfig, targets: list[str], t0: float) -> None:
        self.cfg = cfg
        self.targets = targets
        self.t0 = t0
        self.channels = {t: grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in targets}
        self.stubs = {t: ledger_pb2_grpc.LedgerServiceStub(c) for t, c in self.channels.items()}
        self.ops: list[Op] = []
        self.violations: list[Violation] = []
        self.reservations: dict[str, ReservationInfo] = {}
        self.recent: list[str] = []
        self.account_ids = [f"acct-{i:04d}" for i in range(cfg.accounts)]
        self.features = Features()
        self.stats = Stats()
        self.expiring_lots: set[tuple[str, str]] = set()
        self.initial_total = 0
        self.stopping = False
        self._next_id = 0

    # ---- bookkeeping -------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def violation(self, kind: str, detail: str, *ops: Op) -> None:
        self.violations.append(Violation(kind, detail, [o.op_id for o in ops]))

    def new_op(self, client: int, kind: str, request: Message, **fields: Any) -> Op:
        self._next_id += 1
        op = Op(self._next_id, client, kind, getattr(request, "idempotency_key", ""), request)
        for name, value in fields.items():
            setattr(op, name, value)
        self.ops.append(op)
        return op

    def key(self, rng: random.Random, client: int) -> str:
        # Printable ASCII with a quote and a space: keys are data, never SQL.
        return f"t{self.cfg.seed}-c{client}-{self._next_id + 1}-{rng.getrandbits(32):08x} '\""

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    # ---- executing one op --------------------------------------------------

    async def attempt(self, op: Op, target: str) -> CallResult[Any]:
        method = getattr(self.stubs[target], METHOD_BY_KIND[op.kind])
        result = await call_aio(method, op.request, self.cfg.deadline_s)
        op.attempts.append(
            Attempt(
                round(self.now(), 4),
                target,
                result.code.name,
                result.reason,
                result.replayed,
                result.message[:200] if not result.ok else "",
            )
        )
        transport = result.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        if transport and result.outcome_unknown:
            self.stats.transport_errors += 1
        return result

    async def execute(
        self,
        op: Op,
        rng: random.Random,
        budget_s: float = RETRY_BUDGET_S,
        attempts_max: int = MAX_ATTEMPTS,
    ) -> None:
        """Run `op` until a definitive answer, within a bounded number of tries."""
        op.t_start = self.now()
        give_up = time.monotonic() + budget_s
        for attempt_no in range(attempts_max):
            result = await self.attempt(op, rng.choice(self.targets))
            if not result.outcome_unknown:
                self.settle_outcome(op, result, first_try=attempt_no == 0)
                break
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt_no) * rng.uniform(0.5, 1.5))
        if op.status == "pending":
            op.status = "unknown"
        op.t_end = self.now()

    def settle_outcome(self, op: Op, result: CallResult[Any], first_try: bool) -> None:
        """Record a definitive answer and check it is one the contract allows."""
        op.code, op.reason, op.replayed = result.code.name, result.reason, result.replayed
        if result.replayed and first_try and not op.notes:
            self.violation(
                "fresh_key_replayed", f"op {op.op_id} ({op.kind}) replayed on its first try", op
            )
        if result.replayed and not first_try:
            self.stats.replayed_after_retry += 1
        if result.ok:
            op.status = "ok"
            op.response = result.response
            self.absorb_response(op)
            return
        op.status = "refused"
        allowed = ALLOWED_REFUSALS[op.kind] | EXPECTED_BY_PURPOSE.get(op.expect, set())
        retried = "resolution" in op.notes or len(op.attempts) > 1
        if retried and op.kind == "grant" and op.request.HasField("expires_at"):
            # Retried late, a lot's expires_at may have passed: if the grant never ran,
            # the request is now invalid. Had it run, the balance checks show it.
            allowed = allowed | {("INVALID_ARGUMENT", "INVALID_ARGUMENT")}
        pair = (result.code.name, result.reason)
        loose = (result.code.name, "")
        if pair not in allowed and loose not in allowed:
            self.violation(
                "unexpected_status",
                f"op {op.op_id} {op.kind} got {result.describe()}: {result.message[:300]}",
                op,
            )
        if (
            result.reason == "RESERVATION_NOT_FOUND"
            and op.reservation_id in self.reservations
            and op.expect != "fake_reservation"
        ):
            self.violation("acked_reservation_missing", f"{op.reservation_id} not found", op)

    # ---- what a success tells us -------------------------------------------

    def absorb_response(self, op: Op) -> None:
        resp: Any = op.response
        if op.expect == "ghost_account":
            self.violation("ghost_account_accepted", f"op {op.op_id} {op.kind} on {op.account}", op)
        if hasattr(resp, "balance") and resp.HasField("balance"):
            self.check_balance_snapshot(op, resp.balance)
        if op.kind == "grant":
            if resp.HasField("lot"):
                op.lot_id = resp.lot.lot_id
            return
        if op.kind == "reserve_group":
            op.group_id = resp.group.group_id
            for leg in resp.group.reservations:
                op.reservation_ids[leg.leg_key] = leg.reservation_id
                self.learn(leg)
                self.check_reservation_snapshot(op, leg)
            return
        reservation = resp.reservation
        self.check_reservation_snapshot(op, reservation)
        if op.kind in ("reserve", "charge"):
            op.reservation_ids[""] = reservation.reservation_id
            if reservation.amount != op.amount:
                self.violation(
                    "wrong_amount", f"{op.kind} of {op.amount} made {reservation.amount}", op
                )
            self.learn(reservation)
        else:
            if reservation.reservation_id != op.reservation_id:
                self.violation(
                    "wrong_reservation", f"answered for {reservation.reservation_id}", op
                )
            info = self.reservations.get(op.reservation_id)
            if info is not None:
                info.remaining_guess = reservation.remaining
                info.settled_guess = reservation.settled - reservation.refunded

    def learn(self, reservation: Any) -> None:
        rid = reservation.reservation_id
        if rid in self.reservations:
            return
        expires = reservation.expires_at.seconds + reservation.expires_at.nanos / 1e9
        self.reservations[rid] = ReservationInfo(
            rid,
            reservation.account_id,
            reservation.asset,
            reservation.amount,
            expires,
            reservation.remaining,
            reservation.settled,
        )
        self.recent.append(rid)
        if len(self.recent) > 400:
            del self.recent[:100]

    def check_balance_snapshot(self, op: Op, balance: Any) -> None:
        if balance.available < 0 or balance.reserved < 0:
            self.violation(
                "negative_balance",
                f"{balance.account_id}/{balance.asset} available={balance.available} "
                f"reserved={balance.reserved} after op {op.op_id}",
                op,
            )

    def check_reservation_snapshot(self, op: Op, r: Any) -> None:
        problems = []
        if r.settled + r.released + r.expired > r.amount:
            problems.append("settled+released+expired > amount")
        if r.refunded > r.settled:
            problems.append("refunded > settled")
        if r.remaining != r.amount - r.settled - r.released - r.expired:
            problems.append("remaining != amount-settled-released-expired")
        if min(r.settled, r.released, r.expired, r.refunded, r.remaining) < 0:
            problems.append("negative field")
        if problems:
            self.violation(
                "reservation_caps",
                f"{r.reservation_id} amount={r.amount} settled={r.settled} released={r.released} expired={r.expired} "
                f"refunded={r.refunded} remaining={r.remaining}: {', '.join(problems)}",
                op,
            )

    # ---- building requests ---------------------------------------------------

    def pick_account(self, rng: random.Random) -> str:
        if rng.random() < 0.3:
            return self.account_ids[rng.randrange(self.cfg.hot_accounts)]
        return rng.choice(self.account_ids)

    def pick_amount(self, rng: random.Random) -> int:
        roll = rng.random()
        if roll < 0.05:
            return rng.randint(10**6, AMOUNT_MAX)  # surely more than there is
        if roll < 0.15:
            return rng.randint(200, 3000)
        return rng.randint(1, 60)

    def pick_reservation(self, rng: random.Random) -> ReservationInfo | None:
        if not self.recent:
            return None
        rid = self.recent[-rng.randint(1, min(len(self.recent), 150))]
        return self.reservations[rid]

    def op_grant(self, rng: random.Random, client: int) -> Op:
        account, asset = self.pick_account(rng), rng.choice(self.cfg.assets)
        req = ledger_pb2.GrantRequest(
            account_id=account,
            asset=asset,
            amount=rng.randint(1, 400),
            idempotency_key=self.key(rng, client),
        )
        if self.features.lots:
            req.priority = rng.randint(0, 200)
            req.source = rng.choice(["purchase", "monthly_allowance", "promo"])
            # Short-lived lots only on a few accounts, so that the strict balance
            # model holds everywhere else.
            if account in self.account_ids[-10:] and rng.random() < 0.5:
                req.expires_at.FromSeconds(int(time.time() + rng.uniform(3, 30)))
                self.expiring_lots.add((account, asset))
        return self.new_op(client, "grant", req, account=account, asset=asset, amount=req.amount)

    def op_reserve(self, rng: random.Random, client: int, ttl_s: float | None = None) -> Op:
        account, asset, amount = (
            self.pick_account(rng),
            rng.choice(self.cfg.assets),
            self.pick_amount(rng),
        )
        req = ledger_pb2.ReserveRequest(
            account_id=account, asset=asset, amount=amount, idempotency_key=self.key(rng, client)
        )
        if ttl_s is None:
            ttl_s = rng.choice([1, 2, 3]) if rng.random() < 0.1 else LONG_TTL_S
        req.ttl.FromSeconds(int(ttl_s))
        req.metadata["client"] = str(client)
        return self.new_op(client, "reserve", req, account=account, asset=asset, amount=amount)

    def op_charge(self, rng: random.Random, client: int) -> Op:
        account, asset, amount = (
            self.pick_account(rng),
            rng.choice(self.cfg.assets),
            self.pick_amount(rng),
        )
        req = ledger_pb2.ChargeRequest(
            account_id=account, asset=asset, amount=amount, idempotency_key=self.key(rng, client)
        )
        return self.new_op(client, "charge", req, account=account, asset=asset, amount=amount)

    def op_group(self, rng: random.Random, client: int) -> Op:
        req = ledger_pb2.ReserveGroupRequest(idempotency_key=self.key(rng, client))
        asset = rng.choice(self.cfg.assets)
        for i, account in enumerate(rng.sample(self.account_ids, rng.randint(1, 4))):
            req.legs.add(
                account_id=account, asset=asset, amount=self.pick_amount(rng), leg_key=f"leg-{i}"
            )
        req.ttl.FromSeconds(LONG_TTL_S if rng.random() < 0.8 else 2)
        return self.new_op(client, "reserve_group", req, asset=asset)

    def op_on_reservation(self, rng: random.Random, client: int, kind: str) -> Op | None:
        info = self.pick_reservation(rng)
        if info is None:
            return None
        key = self.key(rng, client)
        rid = info.reservation_id
        over = rng.random() < 0.1
        fields: dict[str, Any] = {
            "account": info.account,
            "asset": info.asset,
            "reservation_id": rid,
        }
        req: Message
        if kind == "settle":
            final = rng.random() < 0.4
            cap = info.remaining_guess + (rng.randint(1, 50) if over else 0)
            amount = rng.randint(0 if final else 1, max(1, cap))
            req = ledger_pb2.SettleRequest(
                reservation_id=rid, amount=amount, final=final, idempotency_key=key
            )
            fields["final"] = final
        elif kind == "release":
            amount = (
                0
                if rng.random() < 0.3
                else rng.randint(1, max(1, info.remaining_guess + (5 if over else 0)))
            )
            req = ledger_pb2.ReleaseRequest(reservation_id=rid, amount=amount, idempotency_key=key)
        else:
            amount = rng.randint(1, max(1, info.settled_guess + (5 if over else 0)))
            req = ledger_pb2.RefundRequest(
                reservation_id=rid,
                amount=amount,
                idempotency_key=key,
                reason="torture: it's a 'test'",
            )
        fields["amount"] = amount
        return self.new_op(client, kind, req, **fields)

    def op_must_fail(self, rng: random.Random, client: int) -> Op:
        key = self.key(rng, client)
        if rng.random() < 0.5:
            ghost = f"ghost-{rng.getrandbits(40):x}"
            req = ledger_pb2.ChargeRequest(
                account_id=ghost, asset="crm_credits", amount=1, idempotency_key=key
            )
            return self.new_op(
                client,
                "charge",
                req,
                account=ghost,
                asset="crm_credits",
                amount=1,
                expect="ghost_account",
            )
        fake = self.fake_reservation_id(rng)
        settle = ledger_pb2.SettleRequest(reservation_id=fake, amount=1, idempotency_key=key)
        return self.new_op(
            client, "settle", settle, reservation_id=fake, amount=1, expect="fake_reservation"
        )

    def fake_reservation_id(self, rng: random.Random) -> str:
        """A well-formed reservation id (a UUID) that nobody made."""
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def next_op(self, rng: random.Random, client: int) -> Op | None:
        choices: list[tuple[float, Callable[[], Op | None]]] = [
            (22, lambda: self.op_reserve(rng, client)),
            (20, lambda: self.op_on_reservation(rng, client, "settle")),
            (9, lambda: self.op_on_reservation(rng, client, "release")),
            (9, lambda: self.op_on_reservation(rng, client, "refund")),
            (15, lambda: self.op_charge(rng, client)),
            (8, lambda: self.op_grant(rng, client)),
            (3, lambda: self.op_must_fail(rng, client)),
        ]
        if self.features.groups:
            choices.append((5, lambda: self.op_group(rng, client)))
        total = sum(w for w, _ in choices)
        roll = rng.uniform(0, total)
        for weight, make in choices:
            roll -= weight
            if roll <= 0:
                return make()
        return choices[0][1]()

    # ---- idempotency probes ----------------------------------------------------

    def pick_acknowledged(self, rng: random.Random) -> Op | None:
        for _ in range(5):
            op = self.ops[rng.randrange(len(self.ops))] if self.ops else None
            # INVALID_ARGUMENT is refused before the key is looked at: nothing to replay.
            # INTERNAL/UNKNOWN answers are violations with no known outcome: not a baseline.
            if (
                op is not None
                and op.acknowledged
                and op.code not in ("INVALID_ARGUMENT", "INTERNAL", "UNKNOWN")
            ):
                return op
        return None

    async def probe_replay(self, rng: random.Random, client: int) -> None:
        """The same request again: the first outcome, byte for byte, marked replayed."""
        op = self.pick_acknowledged(rng)
        if op is None:
            return
        result = await self.attempt_anywhere(op, rng)
        if result is None:
            return
        self.stats.replay_probes += 1
        same_status = (result.code.name, result.reason) == (op.code, op.reason)
        if not same_status:
            self.violation(
                "replay_differs",
                f"op {op.op_id} {op.kind} first {op.code}/{op.reason}, replay {result.describe()}",
                op,
            )
            return
        if not result.replayed:
            self.violation(
                "replay_not_marked", f"op {op.op_id} replay lacks idempotent-replayed", op
            )
        if result.ok and op.response is not None and result.response is not None:
            first = op.response.SerializeToString(deterministic=True)
            again = result.response.SerializeToString(deterministic=True)
            if first != again:
                self.violation(
                    "replay_response_differs",
                    f"op {op.op_id} {op.kind}: first {op.response!s:.300} / replay {result.response!s:.300}",
                    op,
                )

    async def probe_reuse(self, rng: random.Random, client: int) -> None:
        """The same key with another amount: IDEMPOTENCY_KEY_REUSED, nothing changes."""
        op = self.pick_acknowledged(rng)
        if op is None or op.kind == "reserve_group":
            return
        altered = type(op.request)()
        altered.CopyFrom(op.request)
        altered.amount = getattr(op.request, "amount", 0) + 1  # type: ignore[attr-defined]
        probe = Op(-op.op_id, client, op.kind, op.key, altered)
        result = await self.attempt_anywhere(probe, rng)
        if result is None:
            return
        self.stats.reuse_probes += 1
        if (result.code.name, result.reason) != ("FAILED_PRECONDITION", "IDEMPOTENCY_KEY_REUSED"):
            self.violation(
                "key_reuse_not_refused",
                f"op {op.op_id} {op.kind} key reused with amount+1 got {result.describe()}",
                op,
            )

    async def attempt_anywhere(self, op: Op, rng: random.Random) -> CallResult[Any] | None:
        """One definitive answer for `op`'s request, or None when faults hide it."""
        for _ in range(3):
            method = getattr(self.stubs[rng.choice(self.targets)], METHOD_BY_KIND[op.kind])
            result = await call_aio(method, op.request, self.cfg.deadline_s)
            if not result.outcome_unknown:
                return result
        return None

    async def probe_duplicates(self, rng: random.Random, client: int) -> None:
        """The same fresh request twice at once: one executes, both get its outcome."""
        op = self.op_charge(rng, client) if rng.random() < 0.5 else self.op_reserve(rng, client)
        op.notes.append("concurrent duplicate")
        twin = Op(
            -op.op_id,
            client,
            op.kind,
            op.key,
            op.request,
            account=op.account,
            asset=op.asset,
            amount=op.amount,
        )
        twin.notes.append("twin")
        await asyncio.gather(self.execute(op, rng), self.execute(twin, random.Random(rng.random())))
        self.stats.duplicate_probes += 1
        if op.acknowledged and twin.acknowledged:
            same = (op.code, op.reason, op.reservation_ids) == (
                twin.code,
                twin.reason,
                twin.reservation_ids,
            )
            if not same:
                self.violation(
                    "duplicates_disagree",
                    f"op {op.op_id}: {op.code}/{op.reason} {op.reservation_ids} vs "
                    f"{twin.code}/{twin.reason} {twin.reservation_ids}",
                    op,
                )
        elif twin.acknowledged and not op.acknowledged:
            # The twin knows the outcome: it is this op's outcome.
            op.status, op.code, op.reason = twin.status, twin.code, twin.reason
            op.response, op.reservation_ids = twin.response, twin.reservation_ids
            op.notes.append("outcome from twin")

    # ---- the client loop ---------------------------------------------------------

    async def client(self, client: int) -> None:
        rng = random.Random(self.cfg.seed * 1_000_003 + client)
        while not self.stopping:
            roll = rng.random()
            if roll < 0.03:
                await self.probe_replay(rng, client)
            elif roll < 0.04:
                await self.probe_reuse(rng, client)
            elif roll < 0.05:
                await self.probe_duplicates(rng, client)
            else:
                op = self.next_op(rng, client)
                if op is not None:
                    # Some callers give up after two tries and move on: their ops stay
                    # of unknown outcome until the checker replays their keys.
                    impatient = rng.random() < IMPATIENT_SHARE
                    await self.execute(op, rng, attempts_max=2 if impatient else MAX_ATTEMPTS)

    # ---- setup and the expiry race -------------------------------------------------

    async def setup(self) -> None:
        """Accounts, a known total granted over them, and which features exist."""
        rng = random.Random(self.cfg.seed)
        sem = asyncio.Semaphore(32)

        async def create(account: str) -> None:
            async with sem:
                await self.create_account(account, rng)

        await asyncio.gather(*(create(a) for a in self.account_ids))
        await self.probe_features(rng)
        grants = []
        for account in self.account_ids:
            for asset in self.cfg.assets:
                amount = rng.randint(200, 3000)
                req = ledger_pb2.GrantRequest(
                    account_id=account, asset=asset, amount=amount,
                    idempotency_key=f"t{self.cfg.seed}-initial-{account}-{asset}", source="initial",
                )  # fmt: skip
                grants.append(
                    self.new_op(-1, "grant", req, account=account, asset=asset, amount=amount)
                )
                self.initial_total += amount

        async def grant(op: Op) -> None:
            async with sem:
                await self.execute(op, rng, budget_s=120)

        await asyncio.gather(*(grant(op) for op in grants))

    async def create_account(self, account: str, rng: random.Random) -> None:
        req = ledger_pb2.CreateAccountRequest(account_id=account)
        req.metadata["owner"] = "torture"
        for attempt_no in range(30):
            target = rng.choice(self.targets)
            result = await call_aio(self.stubs[target].CreateAccount, req, self.cfg.deadline_s)
            if result.ok or result.code == grpc.StatusCode.ALREADY_EXISTS:
                return
            if not result.outcome_unknown:
                raise RuntimeError(f"CreateAccount {account}: {result.describe()} {result.message}")
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt_no))
        raise RuntimeError(f"CreateAccount {account}: no answer")

    async def probe_features(self, rng: random.Random) -> None:
        """Lots (expires_at/priority) and ReserveGroup are later features: use them if there."""
        account = self.account_ids[0]
        grant = ledger_pb2.GrantRequest(
            account_id=account, asset=self.cfg.assets[0], amount=1, priority=7,
            idempotency_key=f"t{self.cfg.seed}-probe-lots", source="probe",
        )  # fmt: skip
        grant.expires_at.FromSeconds(int(time.time()) + 86400 * 365)
        op = self.new_op(-1, "grant", grant, account=account, asset=self.cfg.assets[0], amount=1)
        op.expect = "feature_probe"
        await self.execute(op, rng, budget_s=60)
        self.initial_total += 1 if op.status == "ok" else 0
        lot: Any = getattr(op.response, "lot", None)
        self.features.lots = bool(
            op.status == "ok"
            and lot is not None
            and lot.priority == 7
            and lot.HasField("expires_at")
        )
        group = ledger_pb2.ReserveGroupRequest(idempotency_key=f"t{self.cfg.seed}-probe-group")
        group.legs.add(account_id=account, asset=self.cfg.assets[0], amount=1, leg_key="probe")
        group.ttl.FromSeconds(2)
        gop = self.new_op(
            -1, "reserve_group", group, asset=self.cfg.assets[0], expect="feature_probe"
        )
        await self.execute(gop, rng, budget_s=60)
        self.features.groups = gop.code != "UNIMPLEMENTED"

    async def expiry_race(self, rng: random.Random, count: int = 6) -> str:
        """Reserve with ttl 1 s, then Settle/Release right around the expiry."""
        reserves = [self.op_reserve(rng, -2, ttl_s=1) for _ in range(count)]
        for op in reserves:
            op.amount = min(op.amount, 50)
            op.request.amount = op.amount  # type: ignore[attr-defined]
        await asyncio.gather(*(self.execute(op, rng, budget_s=5) for op in reserves))
        racers: list[Op] = []
        for op in reserves:
            rid = op.reservation_ids.get("")
            if op.status != "ok" or not rid:
                continue
            info = self.reservations[rid]
            final = rng.random() < 0.5
            settle = ledger_pb2.SettleRequest(
                reservation_id=rid, amount=rng.randint(1, info.amount), final=final,
                idempotency_key=self.key(rng, -2),
            )  # fmt: skip
            racers.append(self.new_op(-2, "settle", settle, account=info.account, asset=info.asset,
                                      reservation_id=rid, amount=settle.amount, final=final))  # fmt: skip
            release = ledger_pb2.ReleaseRequest(
                reservation_id=rid, amount=0, idempotency_key=self.key(rng, -2)
            )
            racers.append(self.new_op(-2, "release", release, account=info.account, asset=info.asset,
                                      reservation_id=rid, amount=0))  # fmt: skip
        wait_s = (
            max(
                0.0,
                min(self.reservations[o.reservation_id].expires_at for o in racers) - time.time(),
            )
            if racers
            else 0.0
        )
        await asyncio.sleep(wait_s + rng.uniform(-0.15, 0.1))

        async def run(op: Op) -> None:
            await asyncio.sleep(rng.uniform(0, 0.2))
            await self.execute(op, rng, budget_s=10)

        await asyncio.gather(*(run(op) for op in racers))
        outcomes = sorted({f"{o.kind}:{o.code}/{o.reason}" for o in racers})
        return f"{len(racers)} racers: {', '.join(outcomes)}"
