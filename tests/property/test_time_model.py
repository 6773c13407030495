"""Every rule and every read sees the same ledger at the same instant.

A Hypothesis state machine drives the real server (grpc.aio on loopback, real
PostgreSQL, real stubs) with a clock it controls: grants with expiries,
reserves with ttls, settles, releases, refunds, charges, group holds, sweeps
and clock jumps (some of them exactly onto a deadline). After every step,
GetAccount, GetBalance and GetReservation must agree with tests/property/model.py,
whether or not the sweeper has run; `ledger verify` holds at the end of each
example.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger.storage.verify import verify
from tests.property.model import Model, MRes, Refused
from tests.support.manual_server import ServerThread
from tests.support.rpc import error_info

T = TypeVar("T")
ASSET = "crm_credits"
REFUND_GRACE = timedelta(hours=1)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    s = ServerThread(database_url, refund_grace_s=REFUND_GRACE.total_seconds())
    yield s
    s.close()


def _ts(t: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def _key() -> str:
    return uuid.uuid4().hex


class TimeMachine(RuleBasedStateMachine):
    server: ServerThread

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(REFUND_GRACE)
        self.accounts: list[str] = []
        self.ids: dict[int, str] = {}  # id(MRes) -> reservation_id

    @property
    def stub(self) -> ledger_pb2_grpc.LedgerServiceStub:
        return self.server.stub

    @property
    def now(self) -> datetime:
        return self.server.clock.t

    def tick(self) -> None:
        """Every command happens at its own instant (lots never tie on created_at)."""
        self.server.clock.t += timedelta(milliseconds=1)

    @initialize()
    def accounts_exist(self) -> None:
        for _ in range(2):
            account = f"tm-{uuid.uuid4().hex[:12]}"
            self.stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
            self.model.create(account)
            self.accounts.append(account)

    def call(self, expect: Refused | None, fn: Any, req: Any) -> Any:
        """Run an RPC; its outcome must be the model's (success, or the same refusal)."""
        try:
            reply = fn(req)
        except grpc.RpcError as exc:
            reason = error_info(exc).reason
            assert expect is not None, (
                f"{type(req).__name__}: server refused {reason}, model accepted"
            )
            assert reason == expect.reason, (
                f"{type(req).__name__}: {reason} != model's {expect.reason}"
            )
            if expect.available is not None:
                got = error_info(exc).metadata["available"]
                assert int(got) == expect.available, (
                    f"available in refusal {got} != {expect.available}"
                )
            return None
        assert expect is None, (
            f"{type(req).__name__}: server accepted, model refused {expect.reason}"
        )
        return reply

    # ------------------------------------------------------------ commands

    @rule(
        who=st.integers(0, 1),
        amount=st.integers(1, 60),
        expires_in_s=st.one_of(st.none(), st.integers(1, 120)),
        priority=st.integers(0, 2),
    )
    def grant(self, who: int, amount: int, expires_in_s: int | None, priority: int) -> None:
        self.tick()
        account = self.accounts[who]
        expires_at = None if expires_in_s is None else self.now + timedelta(seconds=expires_in_s)
        req = pb.GrantRequest(
            account_id=account,
            asset=ASSET,
            amount=amount,
            idempotency_key=_key(),
            priority=priority,
        )
        if expires_at is not None:
            req.expires_at.CopyFrom(_ts(expires_at))
        self.call(None, self.stub.Grant, req)
        self.model.grant(self.now, account, amount, expires_at, priority)

    def _hold_reply(self, expect: Refused | None, res: MRes | None, reply: Any) -> Any:
        if reply is None or res is None:
            return multiple()
        self.model.res[reply.reservation.reservation_id] = res
        self.ids[id(res)] = reply.reservation.reservation_id
        return res

    @rule(
        target=reservations,
        who=st.integers(0, 1),
        amount=st.integers(1, 80),
        ttl_s=st.integers(1, 90),
    )
    def reserve(self, who: int, amount: int, ttl_s: int) -> Any:
        self.tick()
        account = self.accounts[who]
        try:
            res: MRes | None = self.model.reserve(
                self.now, account, amount, timedelta(seconds=ttl_s)
            )
            expect = None
        except Refused as exc:
            res, expect = None, exc
        reply = self.call(
            expect,
            self.stub.Reserve,
            pb.ReserveRequest(
                account_id=account,
                asset=ASSET,
                amount=amount,
                idempotency_key=_key(),
                ttl=duration_pb2.Duration(seconds=ttl_s),
            ),
        )
        return self._hold_reply(expect, res, reply)

    @rule(target=reservations, who=st.integers(0, 1), amount=st.integers(1, 50))
    def charge(self, who: int, amount: int) -> Any:
        self.tick()
        account = self.accounts[who]
        try:
            res: MRes | None = self.model.charge(self.now, account, amount)
            expect = None
        except Refused as exc:
            res, expect = None, exc
        reply = self.call(
            expect,
            self.stub.Charge,
            pb.ChargeRequest(
                account_id=account, asset=ASSET, amount=amount, idempotency_key=_key()
            ),
        )
        return self._hold_reply(expect, res, reply)

    @rule(a=st.integers(1, 40), b=st.integers(1, 40), ttl_s=st.integers(1, 90))
    def reserve_group(self, a: int, b: int, ttl_s: int) -> None:
        self.tick()
        legs = [(self.accounts[0], a), (self.accounts[1], b)]
        try:
            made = self.model.reserve_group(self.now, legs, timedelta(seconds=ttl_s))
            expect = None
        except Refused as exc:
            made, expect = [], exc
        reply = self.call(
            expect,
            self.stub.ReserveGroup,
            pb.ReserveGroupRequest(
                legs=[
                    pb.ReserveGroupLeg(account_id=acct, asset=ASSET, amount=amt, leg_key=f"leg{i}")
                    for i, (acct, amt) in enumerate(legs)
                ],
                idempotency_key=_key(),
                ttl=duration_pb2.Duration(seconds=ttl_s),
            ),
        )
        if reply is not None:
            for res, got in zip(made, reply.group.reservations, strict=True):
                self.model.res[got.reservation_id] = res
                self.ids[id(res)] = got.reservation_id

    def _rid(self, res: MRes) -> str:
        return self.ids[id(res)]

    def _on_reservation(self, fn: Any, model_op: Any, req: Any) -> None:
        try:
            model_op()
            expect = None
        except Refused as exc:
            expect = exc
        self.call(expect, fn, req)

    @rule(res=reservations, amount=st.integers(0, 60), final=st.booleans())
    def settle(self, res: MRes, amount: int, final: bool) -> None:
        if amount == 0:
            final = True
        self.tick()
        self._on_reservation(
            self.stub.Settle,
            lambda: self.model.settle(self.now, res, amount, final),
            pb.SettleRequest(
                reservation_id=self._rid(res), amount=amount, final=final, idempotency_key=_key()
            ),
        )

    @rule(res=reservations, amount=st.integers(0, 60))
    def release(self, res: MRes, amount: int) -> None:
        self.tick()
        self._on_reservation(
            self.stub.Release,
            lambda: self.model.release(self.now, res, amount),
            pb.ReleaseRequest(reservation_id=self._rid(res), amount=amount, idempotency_key=_key()),
        )

    @rule(res=reservations, amount=st.integers(1, 60))
    def refund(self, res: MRes, amount: int) -> None:
        self.tick()
        self._on_reservation(
            self.stub.Refund,
            lambda: self.model.refund(self.now, res, amount),
            pb.RefundRequest(reservation_id=self._rid(res), amount=amount, idempotency_key=_key()),
        )

    # ------------------------------------------------------------ time

    @rule()
    def sweep(self) -> None:
        self.server.run(self.server.app.sweeper.sweep_once())

    @rule(seconds=st.sampled_from([0.5, 1, 2, 5, 30, 61, 95, 3600]))
    def jump(self, seconds: float) -> None:
        self.server.clock.t += timedelta(seconds=seconds)

    @precondition(lambda self: bool(self.model.deadlines()))
    @rule(which=st.integers(0, 1000), just_before=st.booleans())
    def jump_to_deadline(self, which: int, just_before: bool) -> None:
        """Exactly onto a deadline (or a microsecond before it): the `<=` edge."""
        future = sorted(t for t in self.model.deadlines() if t > self.now)
        if not future:
            return
        target = future[which % len(future)]
        if just_before:
            target -= timedelta(microseconds=1)
        if target > self.now:
            self.server.clock.t = target

    # ------------------------------------------------------------ reads

    @invariant()
    def reads_agree_with_the_model(self) -> None:
        if not self.accounts:
            return
        now = self.now
        self.model.advance_to(now)
        for account in self.accounts:
            stats = self.model.stats[account]
            want = (
                self.model.available(account),
                self.model.reserved(account),
                stats.granted,
                stats.settled,
                stats.refunded,
                stats.expired,
            )
            b = self.stub.GetBalance(pb.GetBalanceRequest(account_id=account, asset=ASSET)).balance
            got = (b.available, b.reserved, b.granted, b.settled, b.refunded, b.expired)
            names = "available, reserved, granted, settled, refunded, expired"
            assert got == want, f"GetBalance({names}) of {account} at {now}: {got} != model {want}"
            acct = self.stub.GetAccount(pb.GetAccountRequest(account_id=account)).account
            balances = [x for x in acct.balances if x.asset == ASSET]
            if balances or any(want):
                assert balances, f"GetAccount of {account} shows no {ASSET} balance"
                a = balances[0]
                got = (a.available, a.reserved, a.granted, a.settled, a.refunded, a.expired)
                assert got == want, (
                    f"GetAccount({names}) of {account} at {now}: {got} != model {want}"
                )
        # The newest few after each step (every one at the end: teardown).
        self.check_reservations(list(self.model.res.values())[-6:])

    def check_reservations(self, reservations: list[MRes]) -> None:
        for res in reservations:
            r = self.stub.GetReservation(
                pb.GetReservationRequest(reservation_id=self._rid(res))
            ).reservation
            state = {
                pb.Reservation.STATE_OPEN: "open",
                pb.Reservation.STATE_CLOSED: "closed",
                pb.Reservation.STATE_EXPIRED: "expired",
            }[r.state]
            written_off = getattr(r, "expired", 0)
            got_r = (state, r.settled, r.released + written_off, r.refunded)
            want_r = (res.state, res.settled, res.released + res.written_off, res.refunded)
            assert got_r == want_r, (
                f"GetReservation(state, settled, released, refunded): {got_r} != {want_r}"
            )
            if hasattr(r, "expired"):
                assert written_off == res.written_off, (
                    f"written off {written_off} != {res.written_off}"
                )

    def teardown(self) -> None:
        if self.accounts:
            self.check_reservations(list(self.model.res.values()))
        report = self.server.run(verify(self.server.database_url))
        assert report.ok, f"ledger verify: {report.violations}"


def test_every_read_agrees_with_the_model_at_every_instant(server: ServerThread) -> None:
    TimeMachine.server = server
    run_state_machine_as_test(
        TimeMachine,
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
