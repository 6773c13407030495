"""Typed ledger errors. Each carries a stable UPPER_SNAKE reason.

The service raises these; only the transport maps them to gRPC status codes
(one table, ledger/transport/status.py). `Kind` is the category of an error,
independent of any wire protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    """What sort of failure an error is, for the transport's status table."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    UNAVAILABLE = "unavailable"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, named as in the proto (e.g. `legs[2].amount`)."""

    field: str
    description: str


class LedgerError(Exception):
    """Base of every expected ledger failure."""

    kind: Kind = Kind.INTERNAL
    reason: str = "INTERNAL"
    replayed: bool = False  # set when this is the stored first outcome of a key, replayed

    def __init__(self, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"


class InvalidArgument(LedgerError):
    """The request is malformed or outside a documented limit."""

    kind = Kind.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    # Violations reported, at most: every one travels three times (message, ErrorInfo,
    # BadRequest) in the trailers, and gRPC clients refuse trailers past 8 KiB.
    REPORTED_MAX = 8

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = list(violations)[: self.REPORTED_MAX]
        more = len(violations) - len(self.violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        if more:
            text += f"; and {more} more (the first {self.REPORTED_MAX} are listed)"
        super().__init__(
            f"invalid request: {text}", {"fields": ",".join(v.field for v in self.violations)}
        )


class AccountNotFound(LedgerError):
    kind = Kind.NOT_FOUND
    reason = "ACCOUNT_NOT_FOUND"


class ReservationNotFound(LedgerError):
    kind = Kind.NOT_FOUND
    reason = "RESERVATION_NOT_FOUND"


class ReservationGroupNotFound(LedgerError):
    kind = Kind.NOT_FOUND
    reason = "RESERVATION_GROUP_NOT_FOUND"


class AccountExists(LedgerError):
    kind = Kind.ALREADY_EXISTS
    reason = "ACCOUNT_EXISTS"


class InsufficientCredits(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "INSUFFICIENT_CREDITS"


class IdempotencyKeyReused(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "IDEMPOTENCY_KEY_REUSED"


class ReservationClosed(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "RESERVATION_CLOSED"


class ReservationExpired(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "RESERVATION_EXPIRED"


class AmountExceedsRemaining(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "AMOUNT_EXCEEDS_REMAINING"


class AmountExceedsSettled(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "AMOUNT_EXCEEDS_SETTLED"


class BalanceLimitExceeded(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "BALANCE_LIMIT_EXCEEDED"


class LotLimitExceeded(LedgerError):
    """A Grant would give the pair more live lots than LIVE_LOTS_PER_PAIR_MAX."""

    kind = Kind.FAILED_PRECONDITION
    reason = "LOT_LIMIT_EXCEEDED"


class PreconditionFailed(LedgerError):
    """A condition the request carried (the pair's version, a predicate on its
    available or held) did not hold; nothing changed. The metadata has the pair's
    current version and balances."""

    kind = Kind.FAILED_PRECONDITION
    reason = "PRECONDITION_FAILED"


class PoolDepthExceeded(LedgerError):
    """CreateAccount under a parent that already has POOL_DEPTH_MAX ancestors."""

    kind = Kind.FAILED_PRECONDITION
    reason = "POOL_DEPTH_EXCEEDED"


class CapExceeded(LedgerError):
    """A spend would take a member past one of its caps; nothing changed. The
    metadata names the cap (window, cap) and what is left of it (remaining)."""

    kind = Kind.FAILED_PRECONDITION
    reason = "CAP_EXCEEDED"


class LotNotFound(LedgerError):
    kind = Kind.NOT_FOUND
    reason = "LOT_NOT_FOUND"


class ScheduleNotFound(LedgerError):
    kind = Kind.NOT_FOUND
    reason = "SCHEDULE_NOT_FOUND"


class ScheduleLimitExceeded(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "SCHEDULE_LIMIT_EXCEEDED"


class CreditsHeld(LedgerError):
    """VoidGrant of credits an open reservation holds: settle or release it first."""

    kind = Kind.FAILED_PRECONDITION
    reason = "CREDITS_HELD"


class AmountExceedsUnspent(LedgerError):
    kind = Kind.FAILED_PRECONDITION
    reason = "AMOUNT_EXCEEDS_UNSPENT"


class Contention(LedgerError):
    """Serialization retries ran out; nothing was recorded, retry with the same key."""

    kind = Kind.ABORTED
    reason = "CONTENTION"


class DatabaseUnavailable(LedgerError):
    """The database could not be reached; the outcome is unknown (a commit cut off by a
    failover can have happened): the caller retries with the same key."""

    kind = Kind.UNAVAILABLE
    reason = "DATABASE_UNAVAILABLE"


class WriterUnavailable(LedgerError):
    """The command could not reach the elected writer, or the writer changed
    while it ran. A retry with the same idempotency key is safe: it replays the
    outcome if the command was recorded, and runs it otherwise."""

    kind = Kind.UNAVAILABLE
    reason = "WRITER_UNAVAILABLE"


class Unauthenticated(LedgerError):
    kind = Kind.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(LedgerError):
    kind = Kind.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class RateLimited(LedgerError):
    kind = Kind.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"

    def __init__(
        self, message: str, retry_after_s: float, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            message, {**(metadata or {}), "retry_after_ms": str(int(retry_after_s * 1000))}
        )
        self.retry_after_s = retry_after_s


class TooManyConcurrentCalls(RateLimited):
    """A concurrency limit of the door (calls in flight per connection, per peer,
    of anonymous peers, Health/Watch streams): refused at once, before any work,
    with RetryInfo; metadata `limit` names the limit, `limit_value` its value."""

    reason = "TOO_MANY_CONCURRENT_CALLS"


class DeadlineExceeded(LedgerError):
    """The server's own deadline passed: a request body that never came, or a call
    without a deadline of its own that ran past the server's (docs/security.md)."""

    kind = Kind.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class TopUpRequestNotPending(LedgerError):
    """A Grant's top_up_request_id names no pending top-up request of its account and
    asset: never requested there, or settled by another Grant already. Final for the
    key: a request never becomes pending again."""

    kind = Kind.FAILED_PRECONDITION
    reason = "TOP_UP_REQUEST_NOT_PENDING"


class InvariantViolation(Exception):
    """A broken invariant: a bug, never an expected outcome. Maps to INTERNAL."""


# Errors that are recorded as the final outcome of an idempotency key.
# (Unavailable, Contention and auth failures are never recorded.)
RECORDABLE: dict[str, type[LedgerError]] = {
    cls.reason: cls
    for cls in (
        AccountNotFound,
        ReservationNotFound,
        ReservationGroupNotFound,
        InsufficientCredits,
        ReservationClosed,
        ReservationExpired,
        AmountExceedsRemaining,
        AmountExceedsSettled,
        BalanceLimitExceeded,
        LotLimitExceeded,
        PreconditionFailed,
        CapExceeded,
        LotNotFound,
        ScheduleNotFound,
        ScheduleLimitExceeded,
        CreditsHeld,
        AmountExceedsUnspent,
        TopUpRequestNotPending,
    )
}


class AlertLimitExceeded(LedgerError):
    """The account has ALERTS_PER_ACCOUNT_MAX balance alerts already."""

    kind = Kind.FAILED_PRECONDITION
    reason = "ALERT_LIMIT_EXCEEDED"


class TooManyStreams(LedgerError):
    """The caller holds WATCH_STREAMS_PER_CALLER_MAX change streams open already."""

    kind = Kind.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_STREAMS"
