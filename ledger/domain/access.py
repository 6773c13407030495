"""Who may do what to which accounts: the policy the service enforces.

An `Access` is the authenticated caller as the service sees it: its id (which
scopes idempotency keys), the permissions it holds, and the account-id
prefixes it may touch. Authentication (tokens, certificates) happens before,
in the transport; this module only decides.

Touching an account outside the prefixes reads exactly like touching an
account that does not exist (ACCOUNT_NOT_FOUND / RESERVATION_NOT_FOUND), so
a caller cannot learn which other tenants' accounts exist by guessing ids.
An operation the caller may not perform at all is PERMISSION_DENIED: that
answer depends only on the caller's own grant, never on stored data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ledger.domain.errors import PermissionDenied


class Permission(enum.Enum):
    """What a caller may do. ADMIN implies every other permission."""

    READ = "read"
    SPEND = "spend"
    REFUND = "refund"
    GRANT = "grant"
    ADMIN = "admin"


#: The permission each RPC needs (by its proto method name).
NEEDED: dict[str, Permission] = {
    "CreateAccount": Permission.ADMIN,
    "GetAccount": Permission.READ,
    "GetBalance": Permission.READ,
    "ListEntries": Permission.READ,
    "WatchTransactions": Permission.READ,
    "GetStatement": Permission.READ,
    "ListBalanceAlerts": Permission.READ,
    # Alerts are the billing side's configuration, like grants.
    "SetBalanceAlert": Permission.GRANT,
    "DeleteBalanceAlert": Permission.GRANT,
    "ListReservations": Permission.READ,
    "GetReservation": Permission.READ,
    "GetReservationGroup": Permission.READ,
    "Reserve": Permission.SPEND,
    "ReserveGroup": Permission.SPEND,
    "Settle": Permission.SPEND,
    "Release": Permission.SPEND,
    "Charge": Permission.SPEND,
    "Refund": Permission.REFUND,
    "Grant": Permission.GRANT,
    "SetSpendingLimits": Permission.ADMIN,
    "SetMemberCap": Permission.ADMIN,
    "VoidGrant": Permission.GRANT,
    "CreateGrantSchedule": Permission.GRANT,
    "CancelGrantSchedule": Permission.GRANT,
    "UpdateGrantSchedule": Permission.GRANT,
    "GetGrantSchedule": Permission.READ,
    "ListGrantSchedules": Permission.READ,
    "GetBreakage": Permission.READ,
}

#: The prefix that stands for every account in a caller file.
EVERY_ACCOUNT = "*"

Scope = tuple[str, ...] | None
"""Account-id prefixes a command may touch; None means every account."""


def in_scope(scope: Scope, account_id: str) -> bool:
    """True when `account_id` starts with one of the prefixes (always, for None)."""
    return scope is None or account_id.startswith(scope)


@dataclass(frozen=True, slots=True)
class Access:
    """An authenticated caller: id, permissions and account scope."""

    caller: str
    permissions: frozenset[Permission]
    scope: Scope = None
    # The methods the permissions allow, worked out once: a str set lookup per
    # call instead of enum hashing (Enum.__hash__ is Python code).
    methods: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        admin = Permission.ADMIN in self.permissions
        allowed = frozenset(m for m, p in NEEDED.items() if admin or p in self.permissions)
        object.__setattr__(self, "methods", allowed)

    def may(self, method: str) -> bool:
        """True when the caller may call `method` at all (scope aside)."""
        return method in self.methods

    def require(self, method: str) -> None:
        """Errors: PermissionDenied when the caller lacks the method's permission."""
        if method not in self.methods:
            needed = NEEDED[method].value
            raise PermissionDenied(
                f"caller {self.caller} may not call {method}: it needs the {needed!r} permission",
                {"method": method, "permission": needed},
            )

    def covers(self, account_id: str) -> bool:
        """True when the caller may touch `account_id`."""
        return in_scope(self.scope, account_id)


#: The one local caller used when no caller file is configured: every right, every account.
LOCAL = Access("local", frozenset(Permission), None)
