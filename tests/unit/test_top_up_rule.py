"""The top-up rule in the domain (ledger/domain/alerts.py, WorkingSet): the amount,
net of pending, the monthly cap, the pending bound, settlement, the fingerprint."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from ledger.domain import alerts, errors, limits, rules
from ledger.domain import commands as c
from ledger.domain.model import AlertEventKind, AlertState, BalanceAlert

JAN_31 = datetime(2030, 1, 31, 23, 59, tzinfo=UTC)


def rule(target: int = 1000, cap: int = 0) -> BalanceAlert:
    return BalanceAlert(
        "a", "crm", 200, 200, False, 0, AlertState.ABOVE, JAN_31, top_up_target=target,
        top_up_cap_month=cap,
    )  # fmt: skip


def test_the_gap_net_of_pending_within_the_month_cap() -> None:
    a = rule(cap=900)
    assert alerts.request_top_up(a, 150, JAN_31, "r1") == 850
    assert alerts.request_top_up(a, 100, JAN_31, "r2") == 50  # 1000 - 100 - 850
    assert a.top_up_pending == {"r1": 850, "r2": 50}
    del a.top_up_pending["r1"]  # a Grant settled it
    assert alerts.request_top_up(a, 100, JAN_31, "r3") == 0  # the cap: 900 used
    feb = JAN_31 + timedelta(minutes=1)
    assert alerts.request_top_up(a, 100, feb, "r4") == 850  # a new month
    assert (a.top_up_month, a.top_up_requested_month) == (date(2030, 2, 1), 850)


def test_no_rule_and_the_pending_bound() -> None:
    assert alerts.request_top_up(rule(target=0), 0, JAN_31, "r") == 0
    a = rule()
    a.top_up_pending = {f"r{i}": 1 for i in range(limits.TOP_UP_PENDING_MAX)}
    assert alerts.request_top_up(a, 0, JAN_31, "more") == 0


def test_a_crossing_requests_once_and_a_grant_settles_it() -> None:
    ws = rules.WorkingSet(now=JAN_31, refund_grace=timedelta(days=7))
    ws.accounts.add("a")
    ws.alerts[("a", "crm")] = rule()
    rules.apply(ws, c.Grant("caller", "g", "a", "crm", 1000))
    rules.apply(ws, c.Charge("caller", "c1", "a", "crm", 850))
    rules.apply(ws, c.Charge("caller", "c2", "a", "crm", 10))  # still below: nothing
    ws.close_transaction()
    kinds = [(e.kind, e.amount) for e in ws.events]
    assert kinds == [(AlertEventKind.BALANCE_BELOW, 0), (AlertEventKind.TOP_UP_REQUESTED, 850)]
    request = ws.events[1].request_id
    rules.apply(ws, c.Grant("caller", "p", "a", "crm", 850, top_up_request_id=request))
    assert ws.alerts[("a", "crm")].top_up_pending == {}
    with pytest.raises(errors.TopUpRequestNotPending):
        rules.apply(ws, c.Grant("caller", "p2", "a", "crm", 850, top_up_request_id=request))


def test_the_new_field_leaves_old_fingerprints_alone() -> None:
    """A Grant without top_up_request_id hashes exactly as before the field existed
    (the fields hashed then), so keys stored before the upgrade still replay."""
    plain = c.Grant("caller", "k", "a", "crm", 5)
    before = {
        name: getattr(plain, name)
        for name in (
            "account_id",
            "asset",
            "amount",
            "metadata",
            "expires_at",
            "priority",
            "source",
        )
    }
    assert plain.fingerprint() == c._digest("Grant", before)
    named = c.Grant("caller", "k", "a", "crm", 5, top_up_request_id=str(JAN_31.year))
    assert named.fingerprint() != plain.fingerprint()
