"""Every error the client can raise gets an exit code and a hint that names a next step."""

from __future__ import annotations

import grpc
import pytest
from creditledger_client import KNOWN_REASONS, FieldViolation, LedgerError
from creditledger_client.errors import error_from_status

from ledger.operator.hints import error_report, exit_code_for

# The gRPC code each reason comes with (the server's error contract).
CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "ACCOUNT_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "RESERVATION_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "RESERVATION_GROUP_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ACCOUNT_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "CONTENTION": grpc.StatusCode.ABORTED,
    "DATABASE_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "WRITER_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "TOO_MANY_CONCURRENT_CALLS": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}
EXPECTED_EXIT = {"INVALID_ARGUMENT": 2, "DATABASE_UNAVAILABLE": 3, "WRITER_UNAVAILABLE": 3}


@pytest.mark.parametrize("reason", sorted(KNOWN_REASONS))
def test_every_reason_has_an_exit_code_and_a_filled_in_hint(reason: str) -> None:
    code = CODES.get(reason, grpc.StatusCode.FAILED_PRECONDITION)
    error = LedgerError(
        code,
        "refused",
        reason=reason,
        metadata={"available": "4", "requested": "9", "remaining": "1", "refundable": "2"},
        field_violations=[FieldViolation("amount", "must be > 0")],
    )
    report = error_report(
        error, target="127.0.0.1:1", key="k-1", context={"account_id": "acme", "asset": "sms"}
    )
    hint = str(report["hint"])
    assert exit_code_for(error) == EXPECTED_EXIT.get(reason, 1)
    assert hint and "{" not in hint and "}" not in hint, hint
    assert str(report["summary"]).startswith(f"{reason}: ")


def test_hint_names_what_the_command_was_given() -> None:
    error = LedgerError(grpc.StatusCode.NOT_FOUND, "no", reason="ACCOUNT_NOT_FOUND")
    report = error_report(error, target="t", key=None, context={"account_id": "tenant-1"})
    assert report["hint"] == "Check the id, or create it: ledger account create tenant-1"
    unnamed = error_report(error, target="t", key=None)
    assert unnamed["hint"] == "Check the id, or create it: ledger account create ACCOUNT_ID"


@pytest.mark.parametrize(
    ("code", "exit_code", "words"),
    [
        (grpc.StatusCode.UNAVAILABLE, 3, "Cannot reach the ledger at 10.0.0.9:50051"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 3, "raise --timeout"),
        (grpc.StatusCode.INTERNAL, 1, "server's logs"),
    ],
)
def test_transport_failures_without_a_reason(
    code: grpc.StatusCode, exit_code: int, words: str
) -> None:
    error = error_from_status(code, "boom", None)
    report = error_report(error, target="10.0.0.9:50051", key="k-7")
    assert exit_code_for(error) == exit_code
    assert words in str(report["hint"]) and "--key k-7" in str(report["hint"])
