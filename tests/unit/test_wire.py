"""ledger.service.wire: a forwarded command is the same command, fingerprint and all."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.errors import FieldViolation
from ledger.domain.model import (
    Balance,
    GroupResult,
    Lot,
    Reservation,
    ReservationResult,
    ReservationState,
    Rollover,
    Schedule,
    ScheduleResult,
    ScheduleState,
    Terms,
    VoidResult,
)
from ledger.service import wire

pytestmark = pytest.mark.timeout(10)

RID = "0b7c4f3e-8a1d-4c55-9a55-2d5c3f1e9b10"
COMMANDS: list[c.MutatingCommand] = [
    c.Grant(
        "alice", "k1", "acct-1", "sms", 10, {"why": "promo"},
        datetime(2027, 1, 1, tzinfo=UTC), 5, "campaign", scope=("acct-",),
    ),
    c.Reserve("alice", "k2", "acct-1", "sms", 3, 60.0, {"a": "b"}),
    c.Charge("bob", "k3", "acct-2", "sms", 1, scope=None),
    c.ReserveGroup(
        "bob", "k4", (c.Leg("a", "sms", 1, "x"), c.Leg("b", "email", 2, "y")), None, {}
    ),
    c.Settle("bob", "k5", RID, 2, True),
    c.Release("bob", "k6", RID, 0),
    c.Refund("bob", "k7", RID, 1, "sorry"),
    c.ExpireDue((RID,), (("acct-1", "sms"),)),
    c.Grant(
        "alice", "k8", "acct-1", "sms", 10, category="x_gift", unit_cost_micros=5,
        cost_currency="EUR",
    ),
    c.VoidGrant("alice", "k9", RID, 3, "mistake"),
    c.CreateGrantSchedule(
        "alice", "k10", "acct-1", "sms", 100, "month", 1, datetime(2027, 1, 31, tzinfo=UTC),
        "Europe/Paris", None, 7, "allowance", 3600, Rollover(cap_percent=50, life_s=60), {"p": "1"},
    ),
    c.UpdateGrantSchedule("alice", "k11", RID, 200, None, True),
    c.CancelGrantSchedule("alice", "k12", RID, True),
]  # fmt: skip


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda cmd: cmd.method)
def test_a_command_survives_the_hop(cmd: c.MutatingCommand) -> None:
    (back,) = wire.decode_commands(wire.encode_commands([cmd]))
    assert back == cmd and type(back) is type(cmd)
    if isinstance(cmd, c.ExpireDue) or isinstance(back, c.ExpireDue):
        return  # unkeyed: no fingerprint, caller or scope
    assert back.fingerprint() == cmd.fingerprint()
    assert (back.caller, back.idempotency_key, back.scope) == (
        cmd.caller,
        cmd.idempotency_key,
        cmd.scope,
    )


def test_outcomes_survive_the_hop() -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    res = Reservation(RID, "a", "sms", 3, 1, 0, 0, ReservationState.OPEN, now, now, {"k": "v"})
    insufficient = errors.InsufficientCredits("not enough", {"available": "1"})
    insufficient.replayed = True
    lot = Lot(RID, "a", "sms", 10, 4, 1, "s", None, now, "paid", 7, "USD", RID, 3)
    sched = Schedule(
        RID, "a", "sms", 100, "month", 1, now, "UTC", None, 100, "allowance", None,
        Rollover(cap_amount=5), 0, 2, now, ScheduleState.ACTIVE, {}, now,
        [Terms(2, 50, None)],
    )  # fmt: skip
    outcomes: list[wire.Outcome] = [
        (ReservationResult(res, Balance("a", "sms", 5)), False),
        (GroupResult("g", [res]), True),
        (VoidResult(Balance("a", "sms", 5), lot, 6), False),
        (ScheduleResult(sched, Balance("a", "sms", 5)), True),
        (None, False),
        insufficient,
        errors.InvalidArgument([FieldViolation("amount", "must be > 0")]),
        errors.WriterUnavailable("gone", {"cause": "x"}),
    ]
    back = wire.decode_outcomes(wire.encode_outcomes(outcomes))
    assert back[:5] == outcomes[:5]
    for sent, got in zip(outcomes[5:], back[5:], strict=True):
        assert isinstance(sent, errors.LedgerError) and isinstance(got, errors.LedgerError)
        assert (type(got), got.reason, got.message, got.metadata, got.replayed) == (
            type(sent), sent.reason, sent.message, sent.metadata, sent.replayed,
        )  # fmt: skip
    assert isinstance(back[6], errors.InvalidArgument)
    assert back[6].violations == [FieldViolation("amount", "must be > 0")]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'[{"@c": "Path", "f": {}}]',
        b'[{"x": 1}]',
        b'[{"@c": "Balance", "f": {"account_id": "a", "asset": "s"}}]',
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_commands(data)
