"""One gRPC call, classified: its status, its ErrorInfo reason and whether it was a replay.

The harness never needs more than that from a call, and every part of it (the
torture clients, the fault tests, the hostile-input tests) needs exactly that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

ERROR_DOMAIN = "creditledger.v1"
REPLAYED_KEY = "idempotent-replayed"

# Codes after which the caller cannot know whether the command ran: it must
# retry with the same key. ABORTED (CONTENTION) is documented as "nothing
# recorded", so retrying it is safe and it is handled the same way.
UNKNOWN_OUTCOME_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# A dying server (SIGKILL mid-stream) makes the client's HTTP/2 layer report
# INTERNAL or UNKNOWN with one of these texts; they are transport failures,
# not answers of the service, so their outcome is unknown too.
TRANSPORT_FAILURE_TEXTS = (
    "RST_STREAM",
    "Stream removed",
    "Socket closed",
    "Connection reset",
    "GOAWAY",
    "Broken pipe",
    "Stream refused",
    "failed to connect",
    "Failed to connect",
    "connection attempt timed out",
    "Transport closed",
)

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Reconnect fast after a restart; the default backoff grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass
class CallResult(Generic[ResponseT]):
    """What came back from one attempt."""

    code: grpc.StatusCode
    reason: str = ""
    message: str = ""
    replayed: bool = False
    response: ResponseT | None = None
    error_metadata: dict[str, str] | None = None
    has_status_details: bool = False

    @property
    def body(self) -> Any:
        """The response of an OK call (typed loosely: callers read its fields)."""
        if self.response is None:
            raise AssertionError(f"no response: {self.describe()} {self.message}")
        return self.response

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    @property
    def outcome_unknown(self) -> bool:
        """True when the command may or may not have run."""
        if self.code in UNKNOWN_OUTCOME_CODES:
            return True
        if self.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            return not self.has_status_details and any(
                text in self.message for text in TRANSPORT_FAILURE_TEXTS
            )
        return False

    def describe(self) -> str:
        text = self.code.name
        if self.reason:
            text += f"/{self.reason}"
        return text


def _metadata_dict(md: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if md is None:
        return out
    for item in md:
        key, value = item[0], item[1]
        out[key] = value
    return out


def parse_error_details(trailing: dict[str, Any]) -> tuple[str, dict[str, str], bool]:
    """(ErrorInfo reason, ErrorInfo metadata, whether a google.rpc.Status was sent)."""
    raw = trailing.get("grpc-status-details-bin")
    if not raw:
        return "", {}, False
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except Exception:
        return "", {}, False
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info.reason, dict(info.metadata), True
    return "", {}, True


def bad_request_descriptions(trailing: dict[str, Any]) -> list[str]:
    """The field violations' field names and descriptions of a BadRequest detail."""
    raw = trailing.get("grpc-status-details-bin")
    out: list[str] = []
    if not raw:
        return out
    status = status_pb2.Status()
    status.ParseFromString(raw)
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
            out.extend(f"{v.field}: {v.description}" for v in bad.field_violations)
    return out


async def call_aio(
    method: Callable[..., Any], request: Message, timeout_s: float
) -> CallResult[Any]:
    """One attempt through a grpc.aio multicallable; never raises for a status."""
    try:
        call = method(request, timeout=timeout_s)
        response = await call
        trailing = _metadata_dict(await call.trailing_metadata())
        return CallResult(
            code=grpc.StatusCode.OK,
            replayed=trailing.get(REPLAYED_KEY) == "true",
            response=response,
        )
    except grpc.aio.AioRpcError as err:
        trailing = _metadata_dict(err.trailing_metadata())
        reason, info_md, has_details = parse_error_details(trailing)
        return CallResult(
            code=err.code(),
            reason=reason,
            message=err.details() or "",
            replayed=trailing.get(REPLAYED_KEY) == "true",
            error_metadata=info_md,
            has_status_details=has_details,
        )


def call_sync(method: Any, request: Any, timeout_s: float) -> CallResult[Any]:
    """One attempt through a blocking multicallable; never raises for a status."""
    try:
        response, call = method.with_call(request, timeout=timeout_s)
        trailing = _metadata_dict(call.trailing_metadata())
        return CallResult(
            code=grpc.StatusCode.OK,
            replayed=trailing.get(REPLAYED_KEY) == "true",
            response=response,
        )
    except grpc.RpcError as err:
        trailing = _metadata_dict(err.trailing_metadata())  # type: ignore[attr-defined, unused-ignore]
        reason, info_md, has_details = parse_error_details(trailing)
        return CallResult(
            code=err.code(),  # type: ignore[attr-defined, unused-ignore]
            reason=reason,
            message=err.details() or "",  # type: ignore[attr-defined, unused-ignore]
            replayed=trailing.get(REPLAYED_KEY) == "true",
            error_metadata={
                **info_md,
                **{"_bad_request": "; ".join(bad_request_descriptions(trailing))},
            },
            has_status_details=has_details,
        )


AsyncCall = Callable[[], Awaitable[CallResult[Any]]]
