"""One pair of functions per domain type, between the type and a plain dict.

Storage (rows, jsonb) and stored outcomes (idempotency records) both use
these, so a field is added in one place. Dicts keep datetimes as datetime
objects (orjson writes them as ISO 8601); the readers accept either form, and
fields added later read with their default (records written before them).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from ledger.domain.model import (
    PAID,
    AlertState,
    Allocation,
    Balance,
    BalanceAlert,
    Lot,
    Reservation,
    ReservationState,
    Rollover,
    Schedule,
    ScheduleState,
    Terms,
    spend_rank,
)


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def balance_to_dict(b: Balance) -> dict[str, Any]:
    return dict(b.__dict__)


def balance_from(d: Mapping[str, Any]) -> Balance:
    return Balance(**dict(d))


def ancestors_from(value: Any) -> tuple[str, ...]:
    return tuple(value or ())


def lot_to_dict(lot: Lot) -> dict[str, Any]:
    """With the category's spend rank, which the lots table stores for its index."""
    return {
        **lot.__dict__,
        "spend_rank": spend_rank(lot.category),
        "schedule_id": lot.schedule_id or None,  # a uuid column: none is NULL
    }


def lot_from(d: Mapping[str, Any]) -> Lot:
    expires = d["expires_at"]
    return Lot(
        lot_id=str(d["lot_id"]),
        account_id=d["account_id"],
        asset=d["asset"],
        amount=d["amount"],
        remaining=d["remaining"],
        priority=d["priority"],
        source=d["source"],
        expires_at=_time(expires) if expires is not None else None,
        created_at=_time(d["created_at"]),
        # Lots (and stored outcomes) from before version 13 have no provenance.
        category=d.get("category", PAID),
        unit_cost_micros=d.get("unit_cost_micros"),
        cost_currency=d.get("cost_currency", ""),
        schedule_id=str(d.get("schedule_id") or ""),
        period=d.get("period"),
    )


def schedule_to_dict(s: Schedule) -> dict[str, Any]:
    return {
        **{k: v for k, v in s.__dict__.items() if k not in ("state", "rollover", "metadata")},
        "state": s.state.value,
        "rollover": dict(s.rollover.__dict__) if s.rollover is not None else None,
        "metadata": dict(s.metadata),
        "terms": [
            {
                "from_period": t.from_period,
                "amount": t.amount,
                "rollover": dict(t.rollover.__dict__) if t.rollover is not None else None,
            }
            for t in s.terms
        ],
    }


def schedule_from(d: Mapping[str, Any]) -> Schedule:
    rollover = d.get("rollover")
    ends = d.get("ends_at")
    return Schedule(
        schedule_id=str(d["schedule_id"]),
        account_id=d["account_id"],
        asset=d["asset"],
        amount=d["amount"],
        unit=d["unit"],
        count=d["count"],
        anchor=_time(d["anchor"]),
        time_zone=d["time_zone"],
        ends_at=_time(ends) if ends is not None else None,
        priority=d["priority"],
        category=d["category"],
        lot_life_s=d.get("lot_life_s"),
        rollover=Rollover(**rollover) if rollover else None,
        first_period=d["first_period"],
        next_period=d["next_period"],
        next_start=_time(d["next_start"]),
        state=ScheduleState(d["state"]),
        metadata=dict(d.get("metadata") or {}),
        created_at=_time(d["created_at"]),
        terms=[
            Terms(
                t["from_period"], t["amount"], Rollover(**t["rollover"]) if t["rollover"] else None
            )
            for t in d.get("terms") or ()
        ],
    )


def allocation_from(d: Mapping[str, Any]) -> Allocation:
    return Allocation(
        lot_id=str(d["lot_id"]),
        drawn=d["drawn"],
        settled=d["settled"],
        released=d["released"],
        refunded=d["refunded"],
        expired=d.get("expired", 0),
        # Written before version 16, or on the reservation's own account: empty.
        account_id=d.get("account_id") or "",
    )


def _allocation_to_dict(a: Allocation) -> dict[str, Any]:
    d = dict(a.__dict__)
    if not a.account_id:
        del d["account_id"]  # the reservation's account: kept out of every row
    return d


def reservation_to_dict(r: Reservation) -> dict[str, Any]:
    return {
        **{k: v for k, v in r.__dict__.items() if k not in ("state", "metadata", "allocations")},
        "state": r.state.value,
        "metadata": dict(r.metadata),
        "allocations": [_allocation_to_dict(a) for a in r.allocations],
    }


def reservation_from(d: Mapping[str, Any]) -> Reservation:
    group_id = d["group_id"]
    return Reservation(
        reservation_id=str(d["reservation_id"]),
        account_id=d["account_id"],
        asset=d["asset"],
        amount=d["amount"],
        settled=d["settled"],
        released=d["released"],
        refunded=d["refunded"],
        state=ReservationState(d["state"]),
        created_at=_time(d["created_at"]),
        expires_at=_time(d["expires_at"]),
        metadata=dict(d["metadata"]),
        group_id=str(group_id) if group_id else "",
        leg_key=d["leg_key"],
        allocations=[allocation_from(a) for a in d.get("allocations", ())],
        # Written before version 5: write-offs were counted in `released`.
        expired=d.get("expired", 0),
        leg_index=d.get("leg_index", 0),
        member_id=d.get("member_id") or "",
    )


def alert_from(d: Mapping[str, Any]) -> BalanceAlert:
    return BalanceAlert(
        account_id=d["account_id"],
        asset=d["asset"],
        threshold=int(d["threshold"]),
        recovery=int(d["recovery"]),
        percent=bool(d["percent"]),
        basis=int(d["basis"]),
        state=AlertState(d["state"]),
        created_at=_time(d["created_at"]),
        top_up_target=int(d.get("top_up_target") or 0),
        top_up_cap_month=int(d.get("top_up_cap_month") or 0),
        top_up_pending={str(k): int(v) for k, v in (d.get("top_up_pending") or {}).items()},
        top_up_month=_date(d.get("top_up_month")),
        top_up_requested_month=int(d.get("top_up_requested_month") or 0),
    )


def _date(value: date | str | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)
