"""What an operator should do about each error, and the exit code scripts see."""

from __future__ import annotations

import grpc
from creditledger_client import LedgerError

EXIT_BUSINESS = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_HINTS: dict[str, str] = {
    "INVALID_ARGUMENT": "Fix the request ({violations}); see --help.",
    "ACCOUNT_NOT_FOUND": "Check the id, or create it: ledger account create {account_id}",
    "ACCOUNT_EXISTS": "It is already there: ledger account show {account_id}",
    "RESERVATION_NOT_FOUND": (
        "Check the reservation id; an account's reservations appear in: ledger entries {account_id}"
    ),
    "RESERVATION_GROUP_NOT_FOUND": "Check the group id (ReserveGroup returned it).",
    "INSUFFICIENT_CREDITS": (
        "Nothing was changed. {available} available, {requested} requested: grant more with "
        "`ledger grant {account_id} {asset} AMOUNT`, or ask for at most {available}."
    ),
    "IDEMPOTENCY_KEY_REUSED": (
        "This --key was used before for a different request. Use a new key, or leave --key out."
    ),
    "RESERVATION_CLOSED": (
        "It is fully settled or released; only `ledger refund` still applies. "
        "See: ledger reservation show {reservation_id}"
    ),
    "RESERVATION_EXPIRED": (
        "When it expired, what it held went back to its lots (or was written off where the lot"
        " had expired too); reserve again if the work goes on."
    ),
    "AMOUNT_EXCEEDS_REMAINING": (
        "Only {remaining} is still held ({requested} asked). "
        "See: ledger reservation show {reservation_id}"
    ),
    "AMOUNT_EXCEEDS_SETTLED": (
        "At most {refundable} can still be refunded ({requested} asked). "
        "See: ledger reservation show {reservation_id}"
    ),
    "BALANCE_LIMIT_EXCEEDED": "The balance would pass the ledger's limit; grant less.",
    "LOT_LIMIT_EXCEEDED": (
        "The account holds the most live lots of this asset it may; spend or let some expire first."
    ),
    "PRECONDITION_FAILED": (
        "The pair changed since it was read (now version {version}, available {available},"
        " held {held}): read it again and decide with a new key."
    ),
    "POOL_DEPTH_EXCEEDED": (
        "The parent is already {limit} levels deep; attach the account to a pool nearer the top."
    ),
    "CAP_EXCEEDED": (
        "The member's {window} cap ({cap}) leaves {remaining}; wait for the window to reset"
        " or ask an operator to raise it (ledger SetMemberCap)."
    ),
    "LOT_NOT_FOUND": "No such lot: `ledger balance ACCOUNT ASSET --lots` lists the lots and their ids.",
    "SCHEDULE_NOT_FOUND": "No such grant schedule: check the id CreateGrantSchedule returned.",
    "SCHEDULE_LIMIT_EXCEEDED": (
        "The account has the most active schedules of this asset ({limit}); cancel one first."
    ),
    "CREDITS_HELD": (
        "{held} credits of lot {lot_id} are held by open reservations and cannot be voided; "
        "settle or release them first, or void at most {unspent}."
    ),
    "AMOUNT_EXCEEDS_UNSPENT": "Lot {lot_id} has {unspent} unspent credits to void.",
    "CONTENTION": "The server was too busy to commit. Run the same command again with --key {key}.",
    "DATABASE_UNAVAILABLE": (
        "The server runs but cannot reach PostgreSQL: check the database, then retry with "
        "--key {key}."
    ),
    "WRITER_UNAVAILABLE": (
        "The server could not reach the elected writer (it may be changing): retry with "
        "--key {key}; the retry replays the first outcome if it was recorded."
    ),
    "UNAUTHENTICATED": "Pass a valid token with --token or LEDGER_TOKEN.",
    "PERMISSION_DENIED": "This token may not do that; use an operator token.",
    "RATE_LIMITED": "Too many requests; wait a moment and retry with --key {key}.",
    "TOO_MANY_CONCURRENT_CALLS": (
        "Too many calls in flight (the message names the limit); wait a moment and retry"
        " with --key {key}."
    ),
    "ALERT_LIMIT_EXCEEDED": "This account has the most balance alerts it may; delete one first.",
    "TOP_UP_REQUEST_NOT_PENDING": (
        "That top-up request was settled already or belongs to another account or asset;"
        " grant without top_up_request_id if the payment is really new."
    ),
    "TOO_MANY_STREAMS": "This caller holds the most change streams it may; close one first.",
    "DEADLINE_EXCEEDED": (
        "The server's own deadline passed; the command may or may not have been applied:"
        " retry with --key {key}."
    ),
    "INTERNAL": (
        "A bug in the server, logged there with its stack trace; "
        "report it with the request id of this call."
    ),
}


def exit_code_for(error: LedgerError) -> int:
    """3 when the server could not be reached or answer, 2 for a bad request, else 1."""
    if error.code in _UNREACHABLE_CODES:
        return EXIT_UNREACHABLE
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    return EXIT_BUSINESS


class _Placeholders(dict[str, str]):
    """Values for a hint; one that is unknown reads as its name in capitals (ACCOUNT_ID)."""

    def __missing__(self, name: str) -> str:
        return name.upper()


def _hint(error: LedgerError, target: str, key: str | None, context: dict[str, str]) -> str:
    retry = f" Retry with --key {key} so it applies at most once." if key else ""
    bad = "; ".join(f"{v.field}: {v.description}" for v in error.field_violations)
    if error.reason in _HINTS:
        values = _Placeholders({**context, **error.metadata})
        values["violations"] = bad or error.message
        if key:
            values["key"] = key
        return _HINTS[error.reason].format_map(values)
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        return _HINTS["INVALID_ARGUMENT"].format(violations=bad or error.message)
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"Cannot reach the ledger at {target}. Is `ledger serve` running there? "
            f"Point --target (or LEDGER_TARGET) at it; use --tls if it serves TLS.{retry}"
        )
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"No answer from {target} in time; raise --timeout or check the server.{retry} "
            "(It may have been applied: the same --key makes the retry safe.)"
        )
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        return _HINTS["UNAUTHENTICATED"]
    if error.code == grpc.StatusCode.PERMISSION_DENIED:
        return _HINTS["PERMISSION_DENIED"]
    return f"Unexpected server error; the server's logs have more.{retry}"


def error_report(
    error: LedgerError, *, target: str, key: str | None, context: dict[str, str] | None = None
) -> dict[str, object]:
    """The error as a dict: `summary` and `hint` for people, the rest for scripts.

    `context` holds what the command was given (account_id, asset, reservation_id)
    so the hint can name it.
    """
    name = error.reason or error.code.name
    return {
        "summary": f"{name}: {error.message}",
        "hint": _hint(error, target, key, context or {}),
        "code": error.code.name,
        "reason": error.reason,
        "message": error.message,
        "metadata": dict(error.metadata),
        "field_violations": [
            {"field": v.field, "description": v.description} for v in error.field_violations
        ],
        "key": key,
        # The server's log lines of this call carry it (x-request-id).
        "request_id": error.metadata.get("request_id", ""),
        "exit_code": exit_code_for(error),
    }
