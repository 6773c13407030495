"""ledger.service.pagetoken: round trip, bounded length, bound to the query, total on junk."""

from __future__ import annotations

import base64

import pytest
from hypothesis import settings
from hypothesis import strategies as st

from ledger.domain import errors, limits
from ledger.service import pagetoken
from tests.hostile.strategies import typed, typed_given

INT64_MAX = 2**63 - 1
LONGEST = ("x" * 10_000, "y" * 10_000)  # far longer than any id: the token must not grow


@pytest.mark.parametrize(
    "cursor",
    [
        (0,),
        (1,),
        (INT64_MAX,),
        (INT64_MAX,) * 3,
        (5, 0, 7),
        (INT64_MAX, "00000000-0000-0000-0000-000000000000"),
        ("@" * pagetoken.CURSOR_TEXT_LEN_MAX,) * 3,
    ],
)
def test_round_trip_and_bounded(cursor: tuple[int | str, ...]) -> None:
    token = pagetoken.encode("ListEntries", LONGEST, cursor)
    assert len(token) <= limits.PAGE_TOKEN_LEN_MAX
    assert pagetoken.decode(token, "ListEntries", LONGEST, len(cursor)) == cursor
    assert pagetoken.decode("", "ListEntries", LONGEST, len(cursor)) is None


def test_bound_to_rpc_parts_and_size() -> None:
    token = pagetoken.encode("ListEntries", ("a", "bc"), (9,))
    for rpc, parts, size in [
        ("ListReservations", ("a", "bc"), 1),
        ("ListEntries", ("ab", "c"), 1),
        ("ListEntries", ("a", "bc", ""), 1),
        ("ListEntries", ("a", "bc"), 2),
    ]:
        with pytest.raises(errors.InvalidArgument) as err:
            pagetoken.decode(token, rpc, parts, size, "page_token")
        assert [v.field for v in err.value.violations] == ["page_token"]


@pytest.mark.parametrize(
    "cursor",
    [(), (-1,), (2**63,), (True,), (1.5,), (1, 2, 3, 4), ("",), ("a" * 41,), ("é",), ('"',)],
)
def test_encode_refuses_what_no_row_can_give(cursor: tuple[int | str, ...]) -> None:
    with pytest.raises(errors.InvariantViolation):
        pagetoken.encode("ListEntries", ("a",), cursor)


@typed(settings(max_examples=500, deadline=None))
@typed_given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        st.lists(st.integers(), max_size=4).map(
            lambda v: base64.urlsafe_b64encode(repr(v).replace(" ", "").encode()).decode()
        ),
    )
)
def test_decode_is_total(token: str) -> None:
    """Whatever a caller sends: a cursor of int64s >= 0 or short ASCII, None, or InvalidArgument."""
    try:
        cursor = pagetoken.decode(token, "ListEntries", ("a", ""), 1, "page_token")
    except errors.InvalidArgument as exc:
        assert [v.field for v in exc.violations] == ["page_token"]
        return
    assert cursor is None or all(
        (isinstance(v, int) and 0 <= v <= INT64_MAX) or (isinstance(v, str) and v.isascii())
        for v in cursor
    )
