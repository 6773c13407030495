"""Hypothesis strategies for hostile requests: any field value a caller could send.

Values mix the plausible (real account ids, valid assets and keys, so that
requests reach the ledger's rules) with the hostile (negative, zero, int64
extremes, empty, very long, non-ASCII, control characters, SQL fragments,
unknown ids, absurd durations and timestamps, oversized metadata maps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from creditledger.v1 import ledger_pb2
from hypothesis import given
from hypothesis import strategies as st

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Duration and Timestamp seconds beyond what protobuf allows (+-10,000 years) are hostile too.
PROTO_SECONDS_MAX = 315_576_000_000

SQL_FRAGMENTS = [
    "'; DROP TABLE entries; --",
    '" OR 1=1 --',
    "acct' OR '1'='1",
    "$1",
    "%s",
    "\\x00",
    "); DELETE FROM balances; --",
    "'",
    "\\",
]
REAL_ASSETS = ["crm_credits", "sms_credits"]

ints64 = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([0, -1, 1, 2, 2**31, INT64_MAX, INT64_MIN, 10**15, 10**15 + 1, 2**53 + 1]),
    st.integers(1, 50),
)
ints32 = st.one_of(
    st.integers(INT32_MIN, INT32_MAX), st.sampled_from([0, -1, 1_000_000, 1_000_001])
)


def hostile_text(max_size: int = 300) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=max_size),
        st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),  # control chars, NUL
        st.sampled_from(SQL_FRAGMENTS),
        st.sampled_from(["", " ", "a" * 129, "a" * 4000, "é" * 200, "\U0001f4b3" * 40, "\u202e"]),
    )


def ids(real: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(real), hostile_text(), st.uuids().map(str))


def keys() -> st.SearchStrategy[str]:
    return st.one_of(st.uuids().map(str), hostile_text(200))


def assets() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(REAL_ASSETS), hostile_text(80))


def metadata() -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.just({}),
        st.dictionaries(hostile_text(80), hostile_text(600), max_size=40),
        st.integers(30, 40).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    )


def seconds() -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(
        st.one_of(
            st.integers(-10, 40 * 86400),
            st.sampled_from(
                [0, 1, 30 * 86400, 30 * 86400 + 1, PROTO_SECONDS_MAX, PROTO_SECONDS_MAX + 1]
            ),
            st.integers(INT64_MIN, INT64_MAX),
        ),
        st.one_of(st.just(0), st.integers(INT32_MIN, INT32_MAX)),
    )


F = TypeVar("F", bound=Callable[..., Any])


def typed(decorator: Any) -> Callable[[F], F]:
    """Hypothesis ships no types here (mypy sees Any): keep the decorated function's type."""
    return cast(Callable[[F], F], decorator)


def typed_given(*strategies: Any) -> Callable[[Callable[..., None]], Callable[[], None]]:
    """`given`, typed: the decorated test is called with no arguments."""
    return cast(Callable[[Callable[..., None]], Callable[[], None]], given(*strategies))


def draw_request(
    draw: Callable[[Any], Any], accounts: list[str], reservations: list[str]
) -> tuple[str, Any]:
    """(method name, request) with every field drawn from the hostile strategies."""
    method = draw(
        st.sampled_from(
            [
                "CreateAccount", "GetAccount", "Grant", "Reserve", "ReserveGroup", "Settle",
                "Release", "Refund", "Charge", "GetReservation", "GetReservationGroup",
                "GetBalance", "ListEntries",
            ]
        )
    )  # fmt: skip
    account = draw(ids(accounts))
    reservation = draw(ids(reservations))
    req: Any
    if method == "CreateAccount":
        req = ledger_pb2.CreateAccountRequest(account_id=account, metadata=draw(metadata()))
    elif method == "GetAccount":
        req = ledger_pb2.GetAccountRequest(account_id=account)
    elif method == "Grant":
        req = ledger_pb2.GrantRequest(
            account_id=account, asset=draw(assets()), amount=draw(ints64), idempotency_key=draw(keys()),
            metadata=draw(metadata()), source=draw(hostile_text(100)),
        )  # fmt: skip
        if draw(st.booleans()):
            req.priority = draw(ints32)
        if draw(st.booleans()):
            req.expires_at.seconds, req.expires_at.nanos = draw(seconds())
    elif method in ("Reserve", "Charge"):
        cls = ledger_pb2.ReserveRequest if method == "Reserve" else ledger_pb2.ChargeRequest
        req = cls(
            account_id=account, asset=draw(assets()), amount=draw(ints64), idempotency_key=draw(keys()),
            metadata=draw(metadata()),
        )  # fmt: skip
        if method == "Reserve" and draw(st.booleans()):
            req.ttl.seconds, req.ttl.nanos = draw(seconds())
    elif method == "ReserveGroup":
        req = ledger_pb2.ReserveGroupRequest(
            idempotency_key=draw(keys()), metadata=draw(metadata())
        )
        for _ in range(draw(st.one_of(st.integers(0, 4), st.just(101)))):
            req.legs.add(
                account_id=draw(ids(accounts)),
                asset=draw(assets()),
                amount=draw(ints64),
                leg_key=draw(hostile_text(80)),
            )
        if draw(st.booleans()):
            req.ttl.seconds, req.ttl.nanos = draw(seconds())
    elif method == "Settle":
        req = ledger_pb2.SettleRequest(
            reservation_id=reservation,
            amount=draw(ints64),
            final=draw(st.booleans()),
            idempotency_key=draw(keys()),
        )
    elif method == "Release":
        req = ledger_pb2.ReleaseRequest(
            reservation_id=reservation, amount=draw(ints64), idempotency_key=draw(keys())
        )
    elif method == "Refund":
        req = ledger_pb2.RefundRequest(
            reservation_id=reservation,
            amount=draw(ints64),
            idempotency_key=draw(keys()),
            reason=draw(hostile_text(400)),
        )
    elif method == "GetReservation":
        req = ledger_pb2.GetReservationRequest(reservation_id=reservation)
    elif method == "GetReservationGroup":
        req = ledger_pb2.GetReservationGroupRequest(group_id=draw(ids(reservations)))
    elif method == "GetBalance":
        req = ledger_pb2.GetBalanceRequest(
            account_id=account, asset=draw(assets()), include_lots=draw(st.booleans())
        )
        if draw(st.booleans()):
            req.expiring_within.seconds, req.expiring_within.nanos = draw(seconds())
    else:
        req = ledger_pb2.ListEntriesRequest(
            account_id=account, asset=draw(st.one_of(st.just(""), assets())), page_size=draw(ints32),
            page_token=draw(st.one_of(st.just(""), hostile_text(400))),
        )  # fmt: skip
    return method, req
