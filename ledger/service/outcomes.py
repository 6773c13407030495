"""The first outcome of an idempotency key, as stored JSON, and back.

A replay must answer exactly what the first call answered, so the stored
form holds the whole reply (result or business error), not a pointer to rows
that may have changed since.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.domain import errors
from ledger.domain.model import (
    Balance,
    GrantResult,
    GroupResult,
    Lot,
    Reservation,
    ReservationResult,
    ReservationState,
    Result,
)

Outcome = Result | errors.LedgerError


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _balance(b: Balance) -> dict[str, Any]:
    return dict(b.__dict__)


def _lot(lot: Lot) -> dict[str, Any]:
    return {**lot.__dict__, "expires_at": _dt(lot.expires_at), "created_at": _dt(lot.created_at)}


def _reservation(r: Reservation) -> dict[str, Any]:
    return {
        "reservation_id": r.reservation_id,
        "account_id": r.account_id,
        "asset": r.asset,
        "amount": r.amount,
        "settled": r.settled,
        "released": r.released,
        "refunded": r.refunded,
        "state": r.state.value,
        "created_at": _dt(r.created_at),
        "expires_at": _dt(r.expires_at),
        "metadata": r.metadata,
        "group_id": r.group_id,
        "leg_key": r.leg_key,
        "expired": r.expired,
        "leg_index": r.leg_index,
    }


def _load_reservation(d: dict[str, Any]) -> Reservation:
    created = _parse_dt(d["created_at"])
    expires = _parse_dt(d["expires_at"])
    if created is None or expires is None:
        raise errors.InvariantViolation("stored reservation without created_at/expires_at")
    return Reservation(
        reservation_id=d["reservation_id"],
        account_id=d["account_id"],
        asset=d["asset"],
        amount=d["amount"],
        settled=d["settled"],
        released=d["released"],
        refunded=d["refunded"],
        state=ReservationState(d["state"]),
        created_at=created,
        expires_at=expires,
        metadata=dict(d["metadata"]),
        group_id=d["group_id"],
        leg_key=d["leg_key"],
        # Outcomes stored before version 5 counted write-offs in `released`.
        expired=d.get("expired", 0),
        leg_index=d.get("leg_index", 0),
    )


def _load_lot(d: dict[str, Any]) -> Lot:
    created = _parse_dt(d["created_at"])
    if created is None:
        raise errors.InvariantViolation("stored lot without created_at")
    return Lot(
        d["lot_id"],
        d["account_id"],
        d["asset"],
        d["amount"],
        d["remaining"],
        d["priority"],
        d["source"],
        _parse_dt(d["expires_at"]),
        created,
    )


def encode(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, errors.LedgerError):
        return {
            "error": {
                "reason": outcome.reason,
                "message": outcome.message,
                "metadata": outcome.metadata,
            }
        }
    if isinstance(outcome, GrantResult):
        return {"grant": {"balance": _balance(outcome.balance), "lot": _lot(outcome.lot)}}
    if isinstance(outcome, ReservationResult):
        return {
            "reservation": {
                "reservation": _reservation(outcome.reservation),
                "balance": _balance(outcome.balance),
            }
        }
    if isinstance(outcome, GroupResult):
        return {
            "group": {
                "group_id": outcome.group_id,
                "reservations": [_reservation(r) for r in outcome.reservations],
            }
        }
    return {"none": {}}


def decode(stored: dict[str, Any]) -> Outcome:
    if "error" in stored:
        e = stored["error"]
        cls = errors.RECORDABLE.get(e["reason"])
        if cls is None:
            raise errors.InvariantViolation(f"stored outcome has unknown reason {e['reason']}")
        return cls(e["message"], e["metadata"])
    if "grant" in stored:
        g = stored["grant"]
        return GrantResult(Balance(**g["balance"]), _load_lot(g["lot"]))
    if "reservation" in stored:
        r = stored["reservation"]
        return ReservationResult(_load_reservation(r["reservation"]), Balance(**r["balance"]))
    if "group" in stored:
        g = stored["group"]
        return GroupResult(g["group_id"], [_load_reservation(r) for r in g["reservations"]])
    return None
