"""Status details to typed exceptions, for every reason of the server's error contract."""

from __future__ import annotations

import grpc
import pytest
from creditledger_client import (
    ERROR_CLASSES,
    KNOWN_REASONS,
    AmountExceedsRemaining,
    AmountExceedsSettled,
    FieldViolation,
    InsufficientCredits,
    LedgerError,
    NotFound,
    Unavailable,
)
from creditledger_client import errors as e
from creditledger_client.errors import error_from_status
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

# reason -> (code, class, category): the contract in docs/design.md and the proto.
CONTRACT = {
    "INVALID_ARGUMENT": (grpc.StatusCode.INVALID_ARGUMENT, e.InvalidArgument, e.InvalidArgument),
    "ACCOUNT_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, e.AccountNotFound, e.NotFound),
    "RESERVATION_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, e.ReservationNotFound, e.NotFound),
    "RESERVATION_GROUP_NOT_FOUND": (
        grpc.StatusCode.NOT_FOUND, e.ReservationGroupNotFound, e.NotFound,
    ),
    "ACCOUNT_EXISTS": (grpc.StatusCode.ALREADY_EXISTS, e.AccountExists, e.AlreadyExists),
    "INSUFFICIENT_CREDITS": (
        grpc.StatusCode.FAILED_PRECONDITION, e.InsufficientCredits, e.FailedPrecondition,
    ),
    "IDEMPOTENCY_KEY_REUSED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.IdempotencyKeyReused, e.FailedPrecondition,
    ),
    "RESERVATION_CLOSED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.ReservationClosed, e.FailedPrecondition,
    ),
    "RESERVATION_EXPIRED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.ReservationExpired, e.FailedPrecondition,
    ),
    "AMOUNT_EXCEEDS_REMAINING": (
        grpc.StatusCode.FAILED_PRECONDITION, e.AmountExceedsRemaining, e.FailedPrecondition,
    ),
    "AMOUNT_EXCEEDS_SETTLED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.AmountExceedsSettled, e.FailedPrecondition,
    ),
    "BALANCE_LIMIT_EXCEEDED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.BalanceLimitExceeded, e.FailedPrecondition,
    ),
    "LOT_LIMIT_EXCEEDED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.LotLimitExceeded, e.FailedPrecondition,
    ),
    "PRECONDITION_FAILED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.PreconditionFailed, e.FailedPrecondition,
    ),
    "POOL_DEPTH_EXCEEDED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.PoolDepthExceeded, e.FailedPrecondition,
    ),
    "CAP_EXCEEDED": (grpc.StatusCode.FAILED_PRECONDITION, e.CapExceeded, e.FailedPrecondition),
    "LOT_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, e.LotNotFound, e.NotFound),
    "SCHEDULE_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, e.ScheduleNotFound, e.NotFound),
    "SCHEDULE_LIMIT_EXCEEDED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.ScheduleLimitExceeded, e.FailedPrecondition,
    ),
    "CREDITS_HELD": (grpc.StatusCode.FAILED_PRECONDITION, e.CreditsHeld, e.FailedPrecondition),
    "AMOUNT_EXCEEDS_UNSPENT": (
        grpc.StatusCode.FAILED_PRECONDITION, e.AmountExceedsUnspent, e.FailedPrecondition,
    ),
    "CONTENTION": (grpc.StatusCode.ABORTED, e.Contention, e.Aborted),
    "DATABASE_UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, e.DatabaseUnavailable, e.Unavailable),
    "WRITER_UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, e.WriterUnavailable, e.Unavailable),
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, e.Unauthenticated, e.Unauthenticated),
    "PERMISSION_DENIED": (
        grpc.StatusCode.PERMISSION_DENIED, e.PermissionDenied, e.PermissionDenied,
    ),
    "RATE_LIMITED": (grpc.StatusCode.RESOURCE_EXHAUSTED, e.RateLimited, e.ResourceExhausted),
    "TOO_MANY_CONCURRENT_CALLS": (
        grpc.StatusCode.RESOURCE_EXHAUSTED, e.TooManyConcurrentCalls, e.ResourceExhausted,
    ),
    "ALERT_LIMIT_EXCEEDED": (
        grpc.StatusCode.FAILED_PRECONDITION, e.AlertLimitExceeded, e.FailedPrecondition,
    ),
    "TOP_UP_REQUEST_NOT_PENDING": (
        grpc.StatusCode.FAILED_PRECONDITION, e.TopUpRequestNotPending, e.FailedPrecondition,
    ),
    "TOO_MANY_STREAMS": (
        grpc.StatusCode.RESOURCE_EXHAUSTED, e.TooManyStreams, e.ResourceExhausted,
    ),
    "INTERNAL": (grpc.StatusCode.INTERNAL, e.Internal, e.Internal),
    "DEADLINE_EXCEEDED": (
        grpc.StatusCode.DEADLINE_EXCEEDED, e.DeadlineExceeded, e.DeadlineExceeded,
    ),
}  # fmt: skip
# DEADLINE_EXCEEDED: the server's own deadline; retried with the same key like the code's.
RETRYABLE_REASONS = {
    "CONTENTION",
    "DATABASE_UNAVAILABLE",
    "WRITER_UNAVAILABLE",
    "RATE_LIMITED",
    "TOO_MANY_CONCURRENT_CALLS",
    "DEADLINE_EXCEEDED",
}


def trailers(
    code: grpc.StatusCode,
    message: str,
    *details: Message,
) -> list[tuple[str, bytes]]:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return [("grpc-status-details-bin", status.SerializeToString())]


def info(reason: str, domain: str = "creditledger.v1", **metadata: str) -> Message:
    message: Message = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)
    return message


def test_the_client_knows_exactly_the_contract_reasons() -> None:
    assert set(CONTRACT) == KNOWN_REASONS


@pytest.mark.parametrize("reason", sorted(CONTRACT))
def test_each_reason_becomes_its_class(reason: str) -> None:
    code, cls, category = CONTRACT[reason]
    error = error_from_status(code, "details", trailers(code, "from status", info(reason)))
    assert type(error) is cls and isinstance(error, category) and isinstance(error, LedgerError)
    assert (error.code, error.reason, error.message) == (code, reason, "from status")
    assert error.status is not None and error.status.code == code.value[0]
    assert error.retryable == (reason in RETRYABLE_REASONS)
    assert cls in ERROR_CLASSES


def test_insufficient_credits_carries_its_numbers() -> None:
    code = grpc.StatusCode.FAILED_PRECONDITION
    meta = {"available": "4", "requested": "9", "account_id": "a", "asset": "sms", "leg_key": "b"}
    error = error_from_status(code, "", trailers(code, "m", info("INSUFFICIENT_CREDITS", **meta)))
    assert isinstance(error, InsufficientCredits)
    assert (error.available, error.requested, error.account_id, error.asset, error.leg_key) == (
        4, 9, "a", "sms", "b",
    )  # fmt: skip
    assert dict(error.metadata) == meta


def test_amount_errors_carry_their_numbers() -> None:
    code = grpc.StatusCode.FAILED_PRECONDITION
    over = error_from_status(
        code,
        "",
        trailers(code, "m", info("AMOUNT_EXCEEDS_REMAINING", remaining="3", requested="5")),
    )
    assert isinstance(over, AmountExceedsRemaining) and (over.remaining, over.requested) == (3, 5)
    refund = error_from_status(
        code, "", trailers(code, "m", info("AMOUNT_EXCEEDS_SETTLED", refundable="1", requested="2"))
    )
    assert isinstance(refund, AmountExceedsSettled)
    assert (refund.refundable, refund.requested) == (1, 2)
    missing = error_from_status(code, "", trailers(code, "m", info("AMOUNT_EXCEEDS_SETTLED")))
    assert isinstance(missing, AmountExceedsSettled) and missing.refundable == -1


def test_bad_request_field_violations() -> None:
    code = grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="asset", description="bad"),
            error_details_pb2.BadRequest.FieldViolation(field="amount", description="> 0"),
        ]
    )
    error = error_from_status(code, "", trailers(code, "m", info("INVALID_ARGUMENT"), bad))
    assert error.field_violations == (
        FieldViolation("asset", "bad"),
        FieldViolation("amount", "> 0"),
    )


def test_error_info_of_another_domain_is_not_ours() -> None:
    code = grpc.StatusCode.NOT_FOUND
    error = error_from_status(code, "x", trailers(code, "m", info("ACCOUNT_NOT_FOUND", "other")))
    assert type(error) is NotFound and error.reason == ""


@pytest.mark.parametrize(
    "trailing",
    [None, [], [("grpc-status-details-bin", b"\xff\x00not a status")], [("other", "x")]],
)
def test_without_details_the_code_decides(trailing: list[tuple[str, object]] | None) -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", trailing)
    assert type(error) is Unavailable and error.retryable
    assert (error.reason, error.message, error.status) == ("", "connection refused", None)


def test_unknown_code_is_a_plain_ledger_error() -> None:
    error = error_from_status(grpc.StatusCode.DATA_LOSS, "boom", None)
    assert type(error) is LedgerError and not error.retryable
    assert str(error) == "DATA_LOSS: boom"
