"""The one table from ledger errors to gRPC status codes, and the
google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo) they carry."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from ledger.domain import errors
from ledger.domain.errors import Kind

DOMAIN = "creditledger.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
REPLAYED_KEY = "idempotent-replayed"

CODE_OF: dict[Kind, grpc.StatusCode] = {
    Kind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Kind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.ABORTED: grpc.StatusCode.ABORTED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Kind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(
    error: errors.LedgerError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]:
    """(code, message, trailing metadata) for an error; the metadata holds the details."""
    status = status_message(error)
    trailing: list[tuple[str, str | bytes]] = [(STATUS_DETAILS_KEY, status.SerializeToString())]
    if error.replayed:
        trailing.append((REPLAYED_KEY, "true"))
    return CODE_OF[error.kind], error.message, tuple(trailing)


def status_message(error: errors.LedgerError) -> status_pb2.Status:
    """The google.rpc.Status of an error: what a call's status carries, and what
    a SubmitBatch outcome carries for one command."""
    code = CODE_OF[error.kind]
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details = [_pack(info)]
    if isinstance(error, errors.InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    if isinstance(error, errors.RateLimited):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(error.retry_after_s * 1000)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)
