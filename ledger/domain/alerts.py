"""Low-balance alerts: where a balance crossed its levels (docs/design.md, "Balance alerts").

An alert is ABOVE, BELOW or EXHAUSTED. Every change to the pair's available
(each posting, in the writer's transaction) moves it:

- ABOVE -> BELOW when available falls below the threshold: BALANCE_BELOW;
- BELOW -> EXHAUSTED when available reaches 0: BALANCE_EXHAUSTED (both at
  once when one change goes from above the threshold to 0);
- BELOW or EXHAUSTED -> ABOVE when available comes back to the recovery
  level or above: BALANCE_RECOVERED. Between the two levels nothing fires, so
  a balance hovering around the threshold fires once, not at every wobble;
- EXHAUSTED -> BELOW (silently) when available is above 0 again but under
  the recovery level, so that running out again is a new crossing.

A threshold of 0 never fires (available is never below 0).

An alert may carry a top-up rule: each BALANCE_BELOW crossing also requests
credits from the caller's billing (TOP_UP_REQUESTED, `request_top_up`); the
Grant that names the request settles it (rules.grant).
"""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.domain import limits
from ledger.domain.model import AlertEventKind, AlertState, BalanceAlert


def cross(alert: BalanceAlert, available: int) -> list[AlertEventKind]:
    """Move `alert` to where `available` puts it; the events of the crossings."""
    below, recovered = alert.levels()
    out: list[AlertEventKind] = []
    if alert.state is AlertState.ABOVE and available < below:
        alert.state = AlertState.BELOW
        out.append(AlertEventKind.BALANCE_BELOW)
    if alert.state is AlertState.BELOW and available == 0 and below > 0:
        alert.state = AlertState.EXHAUSTED
        out.append(AlertEventKind.BALANCE_EXHAUSTED)
    if alert.state is not AlertState.ABOVE and available >= max(recovered, below):
        alert.state = AlertState.ABOVE
        out.append(AlertEventKind.BALANCE_RECOVERED)
    if alert.state is AlertState.EXHAUSTED and available > 0:
        alert.state = AlertState.BELOW
    return out


def initial_state(alert: BalanceAlert, available: int) -> AlertState:
    """Where a new (or changed) alert starts: where the balance is, without an event."""
    below, _ = alert.levels()
    if available < below:
        return AlertState.EXHAUSTED if available == 0 else AlertState.BELOW
    return AlertState.ABOVE


def request_top_up(alert: BalanceAlert, available: int, now: datetime, request_id: str) -> int:
    """The top-up rule at a BALANCE_BELOW crossing: the amount to request (0: none),
    recorded as pending under `request_id` and counted in the month of `now` (UTC).

    What brings available back to the target, net of the requests still pending
    (credits already asked for and not yet granted), within what the month's cap
    leaves; nothing past TOP_UP_PENDING_MAX pending requests."""
    if alert.top_up_target <= 0 or len(alert.top_up_pending) >= limits.TOP_UP_PENDING_MAX:
        return 0
    month = now.astimezone(UTC).date().replace(day=1)
    if alert.top_up_month != month:
        alert.top_up_month, alert.top_up_requested_month = month, 0
    amount = alert.top_up_target - available - sum(alert.top_up_pending.values())
    if alert.top_up_cap_month > 0:
        amount = min(amount, alert.top_up_cap_month - alert.top_up_requested_month)
    if amount <= 0:
        return 0
    alert.top_up_pending[request_id] = amount
    alert.top_up_requested_month += amount
    return amount
