"""ListReservations: an account's reservations, oldest first, a page at a time.

Page tokens come from ledger.service.pagetoken (AIP-158): bound to the query
(account_id, asset, state) by a hash, bounded in length whatever the query, so
every token the server makes is accepted back; anything else is
INVALID_ARGUMENT naming page_token, never INTERNAL. The cursor is the last
reservation shown: its created_at in microseconds since 1970, and its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ledger.domain import commands as c
from ledger.domain import errors, limits
from ledger.domain.errors import FieldViolation
from ledger.domain.model import Reservation, ReservationState
from ledger.service import pagetoken

RPC = "ListReservations"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Positions are microseconds since 1970, up to the last one Python can represent.
_POSITION_US_MAX = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // _MICROSECOND


@dataclass(frozen=True)
class ReservationsPage:
    reservations: list[Reservation]
    next_page_token: str


@dataclass(frozen=True)
class ReservationQuery:
    account_id: str
    asset: str
    state: ReservationState | None

    def validate(self, page_size: int) -> None:
        """Errors: InvalidArgument naming each bad field."""
        v = c.Violations()
        v.account_id("account_id", self.account_id)
        if self.asset:
            v.asset("asset", self.asset)
        if not 0 <= page_size <= limits.PAGE_SIZE_MAX:
            v.add(
                "page_size",
                f"must be between 0 and {limits.PAGE_SIZE_MAX} (PAGE_SIZE_MAX); 0 means 100",
            )
        v.raise_if_any()

    def _parts(self) -> tuple[str, str, str]:
        return (self.account_id, self.asset, self.state.value if self.state else "")

    def encode_token(self, last: Reservation) -> str:
        """The token of the page after `last`."""
        position_us = (last.created_at - _EPOCH) // _MICROSECOND
        return pagetoken.encode(RPC, self._parts(), (position_us, last.reservation_id))

    def decode_token(self, token: str) -> tuple[datetime, str] | None:
        """The position after which the page starts; None for the first page.

        Errors: InvalidArgument (page_token) for any token this query did not make.
        """
        cursor = pagetoken.decode(token, RPC, self._parts(), 2)
        if cursor is None:
            return None
        position_us, reservation_id = cursor
        if (
            not isinstance(position_us, int)
            or position_us > _POSITION_US_MAX
            or not isinstance(reservation_id, str)
            or not c.is_uuid(reservation_id)
        ):
            raise errors.InvalidArgument(
                [FieldViolation("page_token", f"is not a next_page_token returned by {RPC}")]
            )
        return _EPOCH + position_us * _MICROSECOND, reservation_id
