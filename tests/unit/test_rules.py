"""The ledger rules on an in-memory working set (no database: pure domain)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledger.domain import commands as c
from ledger.domain import errors, limits, rules
from ledger.domain.model import Balance, Bucket, Lot, ReservationState

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def working_set(now: datetime = NOW) -> rules.WorkingSet:
    ws = rules.WorkingSet(now=now, refund_grace=timedelta(days=7))
    ws.accounts.add("a")
    return ws


def grant(ws: rules.WorkingSet, amount: int, **kw: object) -> Lot:
    result = rules.grant(ws, c.Grant("caller", "k", "a", "crm", amount, **kw))  # type: ignore[arg-type]
    return ws.lots[result.lot.lot_id]


def assert_balanced(ws: rules.WorkingSet) -> None:
    totals: dict[tuple[str, str], int] = {}
    for p in ws.postings:
        totals[(p.transaction_id, p.asset)] = totals.get((p.transaction_id, p.asset), 0) + p.amount
    assert all(v == 0 for v in totals.values()), totals


def test_grant_refuses_to_wrap_int64() -> None:
    ws = working_set()
    ws.balances[("a", "crm")] = Balance(
        "a", "crm", available=limits.INT64_MAX - 5, granted=limits.INT64_MAX - 5
    )
    with pytest.raises(errors.BalanceLimitExceeded) as err:
        rules.grant(ws, c.Grant("caller", "k", "a", "crm", 6))
    assert "INT64_MAX" in err.value.message
    assert ws.postings == []
    rules.grant(ws, c.Grant("caller", "k", "a", "crm", 5))
    assert ws.balances[("a", "crm")].available == limits.INT64_MAX


def test_lots_spent_by_priority_then_expiry_then_age() -> None:
    ws = working_set()
    never = grant(ws, 10)
    late = grant(ws, 10, expires_at=NOW + timedelta(days=30))
    soon = grant(ws, 10, expires_at=NOW + timedelta(days=1))
    allowance = grant(ws, 10, priority=10, expires_at=NOW + timedelta(days=60))
    rules.charge(ws, c.Charge("caller", "k2", "a", "crm", 25))
    assert (allowance.remaining, soon.remaining, late.remaining, never.remaining) == (0, 0, 5, 10)
    assert_balanced(ws)


def test_failed_check_leaves_working_set_untouched() -> None:
    ws = working_set()
    grant(ws, 5)
    before = list(ws.postings)
    with pytest.raises(errors.InsufficientCredits):
        rules.reserve(ws, c.Reserve("caller", "k", "a", "crm", 6))
    assert ws.postings == before
    assert ws.balances[("a", "crm")].available == 5


def test_release_into_expired_lot_writes_it_off() -> None:
    ws = working_set()
    lot = grant(ws, 10, expires_at=NOW + timedelta(minutes=5))
    res = rules.reserve(ws, c.Reserve("caller", "k", "a", "crm", 8)).reservation
    ws.now = NOW + timedelta(minutes=10)  # the lot expired while held
    out = rules.release(ws, c.Release("caller", "k2", res.reservation_id, 0))
    assert out.reservation.state is ReservationState.CLOSED
    # The held 8 are written off, never revived; touching the pair wrote off the unreserved 2 too.
    assert lot.remaining == 0
    assert (out.balance.expired, out.balance.available) == (10, 0)
    written = [p for p in ws.postings if p.account_id == "@expired"]
    assert sum(p.amount for p in written) == 10
    assert_balanced(ws)


def test_refund_into_expired_lot_makes_a_grace_lot() -> None:
    ws = working_set()
    grant(ws, 10, expires_at=NOW + timedelta(minutes=5), priority=7)
    res = rules.charge(ws, c.Charge("caller", "k", "a", "crm", 4)).reservation
    ws.now = NOW + timedelta(minutes=10)
    rules.catch_up(ws, "a", "crm")
    out = rules.refund(ws, c.Refund("caller", "k2", res.reservation_id, 3))
    fresh = [lot for lot in ws.lots.values() if lot.source == "refund"]
    assert len(fresh) == 1 and fresh[0].remaining == 3 and fresh[0].priority == 7
    assert fresh[0].expires_at == ws.now + timedelta(days=7)
    assert out.balance.available == 3 and out.balance.expired == 6
    assert_balanced(ws)


def test_every_posting_names_a_bucket_and_sums_to_zero() -> None:
    ws = working_set()
    grant(ws, 100)
    r = rules.reserve(ws, c.Reserve("caller", "k1", "a", "crm", 40)).reservation
    rules.settle(ws, c.Settle("caller", "k2", r.reservation_id, 10))
    rules.release(ws, c.Release("caller", "k3", r.reservation_id, 5))
    rules.refund(ws, c.Refund("caller", "k4", r.reservation_id, 10))
    ws.now = NOW + timedelta(hours=1)
    rules.expire_due(ws, c.ExpireDue((r.reservation_id,)))
    assert ws.reservations[r.reservation_id].state is ReservationState.EXPIRED
    assert all(isinstance(p.bucket, Bucket) for p in ws.postings)
    assert_balanced(ws)
    bal = ws.balances[("a", "crm")]
    assert (bal.available, bal.reserved, bal.settled, bal.refunded) == (100, 0, 10, 10)


def test_group_is_all_or_nothing_naming_the_leg() -> None:
    ws = working_set()
    ws.accounts.add("pool")
    grant(ws, 10)
    cmd = c.ReserveGroup(
        "caller", "k", (c.Leg("a", "crm", 6, "exec"), c.Leg("a", "crm", 6, "emails"))
    )
    with pytest.raises(errors.InsufficientCredits) as err:
        rules.reserve_group(ws, cmd)
    assert err.value.metadata["leg_key"] == "emails"
    assert err.value.metadata["available"] == "4"
    assert ws.reservations == {}


def test_fingerprint_ignores_key_but_not_fields() -> None:
    a = c.Charge("caller", "k1", "a", "crm", 1)
    assert a.fingerprint() == c.Charge("other", "k2", "a", "crm", 1).fingerprint()
    assert a.fingerprint() != c.Charge("caller", "k1", "a", "crm", 2).fingerprint()
    assert a.fingerprint() != c.Reserve("caller", "k1", "a", "crm", 1).fingerprint()
