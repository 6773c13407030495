"""The first outcome of an idempotency key, as stored JSON, and back.

A replay must answer exactly what the first call answered, so the stored
form holds the whole reply (result or business error), not a pointer to rows
that may have changed since.
"""

from __future__ import annotations

from typing import Any

from ledger.domain import codec, errors
from ledger.domain.model import (
    GrantResult,
    GroupResult,
    LimitsResult,
    ReservationResult,
    Result,
    ScheduleResult,
    VoidResult,
)

Outcome = Result | errors.LedgerError


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
        return {
            "grant": {
                "balance": codec.balance_to_dict(outcome.balance),
                "lot": codec.lot_to_dict(outcome.lot),
            }
        }
    if isinstance(outcome, ReservationResult):
        return {
            "reservation": {
                "reservation": codec.reservation_to_dict(outcome.reservation),
                "balance": codec.balance_to_dict(outcome.balance),
            }
        }
    if isinstance(outcome, ScheduleResult):
        return {
            "schedule": {
                "schedule": codec.schedule_to_dict(outcome.schedule),
                "balance": codec.balance_to_dict(outcome.balance) if outcome.balance else None,
            }
        }
    if isinstance(outcome, VoidResult):
        return {
            "void": {
                "balance": codec.balance_to_dict(outcome.balance),
                "lot": codec.lot_to_dict(outcome.lot),
                "voided": outcome.voided,
            }
        }
    if isinstance(outcome, GroupResult):
        return {
            "group": {
                "group_id": outcome.group_id,
                "reservations": [codec.reservation_to_dict(r) for r in outcome.reservations],
                "balances": [codec.balance_to_dict(b) for b in outcome.balances],
            }
        }
    if isinstance(outcome, LimitsResult):
        return {"limits": {"balance": codec.balance_to_dict(outcome.balance)}}
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
        return GrantResult(codec.balance_from(g["balance"]), codec.lot_from(g["lot"]))
    if "reservation" in stored:
        r = stored["reservation"]
        return ReservationResult(
            codec.reservation_from(r["reservation"]), codec.balance_from(r["balance"])
        )
    if "schedule" in stored:
        sc = stored["schedule"]
        bal = sc.get("balance")
        return ScheduleResult(
            codec.schedule_from(sc["schedule"]), codec.balance_from(bal) if bal else None
        )
    if "void" in stored:
        v = stored["void"]
        return VoidResult(codec.balance_from(v["balance"]), codec.lot_from(v["lot"]), v["voided"])
    if "group" in stored:
        g = stored["group"]
        return GroupResult(
            g["group_id"],
            [codec.reservation_from(r) for r in g["reservations"]],
            # Recorded before versions (migration 0011): no balances.
            tuple(codec.balance_from(b) for b in g.get("balances", ())),
        )
    if "limits" in stored:
        return LimitsResult(codec.balance_from(stored["limits"]["balance"]))
    return None
