"""A replay under a narrowed scope: the caller's tenant scope is checked again
on the stored outcome, not only its rights.

An idempotency key replays what its first call answered. If the caller's
account prefixes were narrowed since (a caller file reload), the stored
outcome may name accounts it may no longer touch: it then reads exactly as a
first call on those accounts would, AccountNotFound (account-addressed
commands) or ReservationNotFound (reservation-addressed ones).
"""

from __future__ import annotations

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.access import Access
from ledger.domain.model import (
    GrantResult,
    GroupResult,
    ReservationResult,
    Result,
    ScheduleResult,
    VoidResult,
)

_BY_RESERVATION = (c.Settle, c.Release, c.Refund)


def check_replayed_error(cmd: c.MutatingCommand, exc: errors.LedgerError, access: Access) -> None:
    """The same for a replayed error; a stored NOT_FOUND already says nothing more."""
    if exc.kind is not errors.Kind.NOT_FOUND:
        check_replay(cmd, None, access)


def accounts_of(cmd: c.MutatingCommand, result: Result | None) -> list[str]:
    """The accounts a command or its stored outcome names."""
    out: list[str] = []
    if isinstance(result, (GrantResult, VoidResult)):
        out.append(result.balance.account_id)
    elif isinstance(result, ReservationResult):
        out.append(result.reservation.spender)
    elif isinstance(result, GroupResult):
        out += [r.spender for r in result.reservations]
    elif isinstance(result, ScheduleResult):
        out.append(result.schedule.account_id)
    account_id = getattr(cmd, "account_id", None)
    if isinstance(account_id, str):
        out.append(account_id)
    if isinstance(cmd, c.ReserveGroup):
        out += [leg.account_id for leg in cmd.legs]
    return out


def check_replay(cmd: c.MutatingCommand, result: Result | None, access: Access) -> None:
    """Errors: AccountNotFound or ReservationNotFound when a replayed outcome names
    an account outside the caller's scope as it is now, word for word what the
    rules answer a first call on it (a group names its first such leg)."""
    if access.scope is None:
        return
    if isinstance(cmd, c.ReserveGroup):
        for leg in cmd.legs:
            if not access.covers(leg.account_id):
                raise errors.AccountNotFound(
                    f"account {leg.account_id} not found; create it with CreateAccount",
                    {"account_id": leg.account_id, "leg_key": leg.leg_key},
                )
    for account_id in accounts_of(cmd, result):
        if not access.covers(account_id):
            if isinstance(cmd, _BY_RESERVATION):
                rid = cmd.reservation_id
                raise errors.ReservationNotFound(f"reservation {rid} not found")
            if isinstance(cmd, c.CancelGrantSchedule | c.UpdateGrantSchedule):
                sid = cmd.schedule_id
                raise errors.ScheduleNotFound(
                    f"grant schedule {sid} not found", {"schedule_id": sid}
                )
            if isinstance(cmd, c.VoidGrant):
                raise errors.LotNotFound(f"lot {cmd.lot_id} not found", {"lot_id": cmd.lot_id})
            raise errors.AccountNotFound(
                f"account {account_id} not found; create it with CreateAccount",
                {"account_id": account_id},
            )
