"""journal.row and stream.group build their frozen types without __init__
(model.built, for the change stream's cost): the result must be what the
constructors give, with every field set."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from ledger.domain.model import (
    Balance,
    Bucket,
    Entry,
    JournalRow,
    Movement,
    StreamTransaction,
    built,
)
from ledger.service.stream import group
from ledger.storage import journal

AT = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def _record(entry_id: int, after: bool) -> dict[str, Any]:
    return {
        "xid": "742",
        "entry_id": entry_id,
        "transaction_id": "6d7c9b2e-0000-4000-8000-000000000001",
        "account_id": "acct-1",
        "asset": "credits",
        "amount": 5,
        "movement": "reserve",
        "bucket": "held",
        "reservation_id": "6d7c9b2e-0000-4000-8000-000000000002",
        "lot_id": None,
        "created_at": AT,
        "caller": "svc",
        "idempotency_key": "k1",
        "effective_at": None,
        "available_after": 10 if after else None,
        "reserved_after": 5,
        "granted_after": 15,
        "settled_after": 0,
        "refunded_after": 0,
        "expired_after": 0,
    }


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("after", [True, False])
def test_row_is_what_the_constructors_build(after: bool) -> None:
    got = journal.row(_record(9, after))
    entry = Entry(
        entry_id=9,
        transaction_id="6d7c9b2e-0000-4000-8000-000000000001",
        account_id="acct-1",
        asset="credits",
        amount=5,
        movement=Movement.RESERVE,
        bucket=Bucket.HELD,
        reservation_id="6d7c9b2e-0000-4000-8000-000000000002",
        lot_id="",
        created_at=AT,
    )
    balance = Balance("acct-1", "credits", 10, 5, 15, 0, 0, 0) if after else None
    assert got == JournalRow(742, entry, "svc", "k1", None, balance)
    assert hash(got.entry) == hash(entry)
    assert set(vars(got)) == _names(JournalRow)
    assert set(vars(got.entry)) == _names(Entry)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.entry.amount = 6  # type: ignore[misc]


def test_group_sets_every_field() -> None:
    rows = [journal.row(_record(n, True)) for n in (9, 10)]
    (tx,) = group(rows)
    assert set(vars(tx)) == _names(StreamTransaction)
    assert tx.position == (742, 10)
    assert [e.entry_id for e in tx.entries] == [9, 10]
    assert tx.events == []


def test_built_equals_the_constructor() -> None:
    balance = Balance("a", "credits", available=1, cap_day=3)
    assert built(Balance, **dataclasses.asdict(balance)) == balance
