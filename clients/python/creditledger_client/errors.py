"""Typed exceptions built from the server's google.rpc.Status details.

The server answers every failure with a gRPC status whose details carry a
google.rpc.ErrorInfo (domain "creditledger.v1", a stable UPPER_SNAKE reason and
string metadata) and, for INVALID_ARGUMENT, a google.rpc.BadRequest. Callers
branch on exception classes instead of parsing messages; the raw status stays
reachable as `LedgerError.status` for anything this module does not model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

# googleapis-common-protos ships no type information; the messages used here are
# simple, and tests exercise every field read from them.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

DOMAIN = "creditledger.v1"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: The request id: sent by the client on every call, returned by the server in
#: trailers and in ErrorInfo metadata, written on every server log line of the call.
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_METADATA = "request_id"

#: Codes that mean "this attempt did not get an answer, or was told to come back":
#: safe to retry a mutation with the same idempotency key, never with a new one.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, from google.rpc.BadRequest."""

    field: str
    description: str


class LedgerError(Exception):
    """A failed ledger call: gRPC code, ErrorInfo reason and metadata, raw status.

    `reason` is "" when the failure did not come from the ledger itself (a
    connection refused, a deadline hit in the client, a proxy error).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        status: status_pb2.Status | None = None,
        request_id: str = "",
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {reason + ': ' if reason else ''}{message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.status = status
        #: The call's request id, to find its lines in the server's logs: the
        #: server's (ErrorInfo metadata `request_id`, else the `x-request-id`
        #: trailer), else the one this client sent. "" only for errors built by hand.
        self.request_id = request_id
        #: The server's google.rpc.RetryInfo delay (RATE_LIMITED sends one):
        #: do not retry before it has passed. None when the server gave none.
        self.retry_delay_s = retry_delay_s

    @property
    def retryable(self) -> bool:
        """Whether a retry with the same idempotency key may succeed."""
        return self.code in RETRYABLE_CODES

    def _int(self, key: str) -> int:
        """An integer the server put in the ErrorInfo metadata; -1 when absent."""
        try:
            return int(self.metadata[key])
        except (KeyError, ValueError):
            return -1


# Categories by gRPC code, so a caller can catch a family at once.
class InvalidArgument(LedgerError):
    """INVALID_ARGUMENT: the request itself is wrong; `field_violations` says where."""


class NotFound(LedgerError):
    """NOT_FOUND: the account, reservation or group does not exist."""


class AlreadyExists(LedgerError):
    """ALREADY_EXISTS."""


class FailedPrecondition(LedgerError):
    """FAILED_PRECONDITION: the ledger's state refuses the request; retrying will not help."""


class Unavailable(LedgerError):
    """UNAVAILABLE: the server (or its database) could not be reached; retryable."""


class DeadlineExceeded(LedgerError):
    """DEADLINE_EXCEEDED: no answer in time; the request may or may not have been applied."""


class Aborted(LedgerError):
    """ABORTED: the server gave up under contention; retryable with the same key."""


class ResourceExhausted(LedgerError):
    """RESOURCE_EXHAUSTED: rate limited; retryable later with the same key."""


class Unauthenticated(LedgerError):
    """UNAUTHENTICATED: no token, or a token the server does not accept."""


class PermissionDenied(LedgerError):
    """PERMISSION_DENIED: the token is valid but may not do this."""


class Internal(LedgerError):
    """INTERNAL: a bug in the server, logged there with its stack trace (find it by request_id)."""


# One class per reason the server documents.
class AccountNotFound(NotFound):
    """ACCOUNT_NOT_FOUND."""


class ReservationNotFound(NotFound):
    """RESERVATION_NOT_FOUND."""


class ReservationGroupNotFound(NotFound):
    """RESERVATION_GROUP_NOT_FOUND."""


class AccountExists(AlreadyExists):
    """ACCOUNT_EXISTS: CreateAccount of an id that is taken."""


class InsufficientCredits(FailedPrecondition):
    """INSUFFICIENT_CREDITS: available is smaller than requested; nothing changed."""

    @property
    def available(self) -> int:
        """Credits that were available when the request was refused."""
        return self._int("available")

    @property
    def requested(self) -> int:
        """Credits the request asked for."""
        return self._int("requested")

    @property
    def account_id(self) -> str:
        """The account that lacked credits (for a group: the failing leg's)."""
        return self.metadata.get("account_id", "")

    @property
    def asset(self) -> str:
        """The asset that lacked credits."""
        return self.metadata.get("asset", "")

    @property
    def leg_key(self) -> str:
        """For ReserveGroup, the leg that failed; "" otherwise."""
        return self.metadata.get("leg_key", "")


class IdempotencyKeyReused(FailedPrecondition):
    """IDEMPOTENCY_KEY_REUSED: the key was used before with a different request."""


class ReservationClosed(FailedPrecondition):
    """RESERVATION_CLOSED: the reservation was fully settled or released."""


class ReservationExpired(FailedPrecondition):
    """RESERVATION_EXPIRED: the reservation passed its expires_at; its hold was released."""


class AmountExceedsRemaining(FailedPrecondition):
    """AMOUNT_EXCEEDS_REMAINING: settle or release of more than is still held."""

    @property
    def remaining(self) -> int:
        """What the reservation still holds."""
        return self._int("remaining")

    @property
    def requested(self) -> int:
        """What the request asked for."""
        return self._int("requested")


class AmountExceedsSettled(FailedPrecondition):
    """AMOUNT_EXCEEDS_SETTLED: refund of more than was settled and not yet refunded."""

    @property
    def refundable(self) -> int:
        """Settled minus already refunded."""
        return self._int("refundable")

    @property
    def requested(self) -> int:
        """What the request asked for."""
        return self._int("requested")


class BalanceLimitExceeded(FailedPrecondition):
    """BALANCE_LIMIT_EXCEEDED: a grant would take the balance past the ledger's limit."""

    @property
    def limit(self) -> int:
        """The largest balance the ledger keeps."""
        return self._int("limit")

    @property
    def requested(self) -> int:
        """What the grant asked for."""
        return self._int("requested")


class LotLimitExceeded(FailedPrecondition):
    """LOT_LIMIT_EXCEEDED: the account holds the most live lots of the asset one
    account may (LIVE_LOTS_PER_PAIR_MAX); metadata says the limit."""

    @property
    def limit(self) -> int:
        """The most live lots one account may hold of one asset."""
        return self._int("limit")

    @property
    def live_lots(self) -> int:
        """The live lots the account holds of the asset."""
        return self._int("live_lots")


class PreconditionFailed(FailedPrecondition):
    """PRECONDITION_FAILED: a precondition the request carried (the pair's version,
    a predicate on available or held) did not hold; nothing changed. Metadata has
    the pair's current state: read it, decide, retry with a new key."""

    @property
    def version(self) -> int:
        """The pair's current version."""
        return self._int("version")

    @property
    def available(self) -> int:
        """The pair's current available."""
        return self._int("available")

    @property
    def held(self) -> int:
        """The pair's current held credits."""
        return self._int("held")


class PoolDepthExceeded(FailedPrecondition):
    """POOL_DEPTH_EXCEEDED: CreateAccount under a parent that already has the most
    ancestors a pool may (POOL_DEPTH_MAX)."""


class CapExceeded(FailedPrecondition):
    """CAP_EXCEEDED: the spend would take the member past a cap; nothing changed.
    Metadata names the cap (window, cap) and what is left of it."""

    @property
    def window(self) -> str:
        """day, month or lifetime."""
        return self.metadata.get("window", "")

    @property
    def cap(self) -> int:
        """The cap."""
        return self._int("cap")

    @property
    def remaining(self) -> int:
        """What the cap still leaves."""
        return self._int("remaining")


class LotNotFound(NotFound):
    """LOT_NOT_FOUND: no such lot (VoidGrant)."""


class ScheduleNotFound(NotFound):
    """SCHEDULE_NOT_FOUND: no such grant schedule."""


class ScheduleLimitExceeded(FailedPrecondition):
    """SCHEDULE_LIMIT_EXCEEDED: the account and asset have the most active schedules."""

    @property
    def limit(self) -> int:
        """The most active schedules one account may have of one asset."""
        return self._int("limit")


class CreditsHeld(FailedPrecondition):
    """CREDITS_HELD: VoidGrant of credits that open reservations hold; settle or
    release them first. `held` says how many are held, `unspent` how many may be voided."""

    @property
    def held(self) -> int:
        """The lot's credits held by open reservations."""
        return self._int("held")

    @property
    def unspent(self) -> int:
        """The lot's unspent, unheld credits: what may be voided."""
        return self._int("unspent")


class AmountExceedsUnspent(FailedPrecondition):
    """AMOUNT_EXCEEDS_UNSPENT: VoidGrant of more than the lot's unspent remainder."""

    @property
    def unspent(self) -> int:
        """The lot's unspent, unheld credits: what may be voided."""
        return self._int("unspent")


class Contention(Aborted):
    """CONTENTION: the server's own retries of a serialization failure ran out."""


class DatabaseUnavailable(Unavailable):
    """DATABASE_UNAVAILABLE: the server runs but cannot reach PostgreSQL.

    The command may or may not have happened (a commit cut off by a database
    failover can have committed): retry it with the same idempotency key.
    """


class WriterUnavailable(Unavailable):
    """WRITER_UNAVAILABLE: the server could not reach the elected writer, or the writer
    changed while the command ran; a retry with the same key replays or runs it."""


class RateLimited(ResourceExhausted):
    """RATE_LIMITED: too many requests from this caller; `retry_delay_s` says when to come back.

    The client's own retries already wait at least that long.
    """


class TooManyConcurrentCalls(RateLimited):
    """TOO_MANY_CONCURRENT_CALLS: too many calls in flight on this connection, from this
    caller, or from callers known only by their address (`metadata["limit"]` names the
    limit). Nothing was done; the client's own retries wait at least `retry_delay_s`.
    """


class AlertLimitExceeded(FailedPrecondition):
    """ALERT_LIMIT_EXCEEDED: the account has ALERTS_PER_ACCOUNT_MAX balance alerts already."""


class TopUpRequestNotPending(FailedPrecondition):
    """TOP_UP_REQUEST_NOT_PENDING: a Grant's top_up_request_id is no pending top-up
    request of its account and asset (never requested there, or settled already).
    Final for the idempotency key; nothing was granted."""


class TooManyStreams(ResourceExhausted):
    """TOO_MANY_STREAMS: the caller holds WATCH_STREAMS_PER_CALLER_MAX change streams
    open already; close one (or watch a wider filter on one) before opening another."""

    @property
    def retryable(self) -> bool:
        """Not until the caller closes a stream: the same call is refused again."""
        return False


_BY_REASON: dict[str, type[LedgerError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "ACCOUNT_NOT_FOUND": AccountNotFound,
    "RESERVATION_NOT_FOUND": ReservationNotFound,
    "RESERVATION_GROUP_NOT_FOUND": ReservationGroupNotFound,
    "ACCOUNT_EXISTS": AccountExists,
    "INSUFFICIENT_CREDITS": InsufficientCredits,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReused,
    "RESERVATION_CLOSED": ReservationClosed,
    "RESERVATION_EXPIRED": ReservationExpired,
    "AMOUNT_EXCEEDS_REMAINING": AmountExceedsRemaining,
    "AMOUNT_EXCEEDS_SETTLED": AmountExceedsSettled,
    "BALANCE_LIMIT_EXCEEDED": BalanceLimitExceeded,
    "LOT_LIMIT_EXCEEDED": LotLimitExceeded,
    "PRECONDITION_FAILED": PreconditionFailed,
    "POOL_DEPTH_EXCEEDED": PoolDepthExceeded,
    "CAP_EXCEEDED": CapExceeded,
    "LOT_NOT_FOUND": LotNotFound,
    "SCHEDULE_NOT_FOUND": ScheduleNotFound,
    "SCHEDULE_LIMIT_EXCEEDED": ScheduleLimitExceeded,
    "CREDITS_HELD": CreditsHeld,
    "AMOUNT_EXCEEDS_UNSPENT": AmountExceedsUnspent,
    "CONTENTION": Contention,
    "DATABASE_UNAVAILABLE": DatabaseUnavailable,
    "WRITER_UNAVAILABLE": WriterUnavailable,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "RATE_LIMITED": RateLimited,
    "TOO_MANY_CONCURRENT_CALLS": TooManyConcurrentCalls,
    "TOO_MANY_STREAMS": TooManyStreams,
    "ALERT_LIMIT_EXCEEDED": AlertLimitExceeded,
    "TOP_UP_REQUEST_NOT_PENDING": TopUpRequestNotPending,
    "INTERNAL": Internal,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}

_BY_CODE: dict[grpc.StatusCode, type[LedgerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
}

#: Every reason this client turns into its own class.
KNOWN_REASONS: frozenset[str] = frozenset(_BY_REASON)


@dataclass(frozen=True, slots=True)
class _Details:
    reason: str = ""
    metadata: Mapping[str, str] | None = None
    violations: tuple[FieldViolation, ...] = ()
    status: status_pb2.Status | None = None
    retry_delay_s: float | None = None


def metadata_pairs(metadata: Iterable[Any] | None) -> list[tuple[str, Any]]:
    """(key, value) pairs of gRPC metadata in any of its shapes (tuples, aio.Metadata)."""
    return [(item[0], item[1]) for item in metadata or ()]


def _parse_details(trailing: Iterable[Any] | None) -> _Details:
    """Reads ErrorInfo (of our domain) and BadRequest out of grpc-status-details-bin."""
    raw = next((v for k, v in metadata_pairs(trailing) if k == _STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return _Details()
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except Exception:  # a proxy's garbage must not hide the gRPC code
        return _Details()
    reason, metadata, violations = "", dict[str, str](), list[FieldViolation]()
    retry_delay_s: float | None = None
    for any_detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if any_detail.Is(info.DESCRIPTOR) and any_detail.Unpack(info) and info.domain == DOMAIN:
            reason, metadata = info.reason, dict(info.metadata)
        elif any_detail.Is(bad.DESCRIPTOR) and any_detail.Unpack(bad):
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif any_detail.Is(retry.DESCRIPTOR) and any_detail.Unpack(retry):
            delay = retry.retry_delay
            retry_delay_s = max(0.0, delay.seconds + delay.nanos / 1e9)
    return _Details(reason, metadata, tuple(violations), status, retry_delay_s)


def _request_id(details: _Details, trailing: Iterable[Any] | None, sent: str) -> str:
    """The server's request id (ErrorInfo metadata, then trailer), else the one sent."""
    from_info = (details.metadata or {}).get(_REQUEST_ID_METADATA, "")
    if from_info:
        return from_info
    for key, value in metadata_pairs(trailing):
        if key == REQUEST_ID_HEADER and value:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return sent


def error_from_status(
    code: grpc.StatusCode,
    message: str,
    trailing: Iterable[Any] | None,
    *,
    sent_request_id: str = "",
) -> LedgerError:
    """Builds the most specific LedgerError for a failed call's status and trailers.

    `sent_request_id` is the `x-request-id` the call went out with: the error's
    request id when the server answered none (the call never reached it).
    """
    details = _parse_details(trailing)
    cls = _BY_REASON.get(details.reason) or _BY_CODE.get(code, LedgerError)
    return cls(
        code,
        details.status.message
        if details.status is not None and details.status.message
        else message,
        reason=details.reason,
        metadata=details.metadata,
        field_violations=details.violations,
        status=details.status,
        request_id=_request_id(details, trailing, sent_request_id),
        retry_delay_s=details.retry_delay_s,
    )


def error_from_rpc_error(err: grpc.RpcError, *, sent_request_id: str = "") -> LedgerError:
    """Converts a grpc (sync or asyncio) RpcError; works for both call flavours."""
    code, details, trailing = _rpc_error_parts(err)
    return error_from_status(code, details, trailing, sent_request_id=sent_request_id)


def _rpc_error_parts(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, Iterable[Any] | None]:
    # An RpcError raised by grpc is also a Call; a bare RpcError (rare) has no status.
    code_fn = getattr(err, "code", None)
    if code_fn is None:
        return grpc.StatusCode.UNKNOWN, str(err), None
    code = code_fn()
    details = err.details() or ""
    trailing = err.trailing_metadata()
    return code, details, trailing


#: Every exception class, most specific first per reason (used by tests and docs).
ERROR_CLASSES: tuple[type[LedgerError], ...] = tuple(
    dict.fromkeys([*_BY_REASON.values(), *_BY_CODE.values()])
)
