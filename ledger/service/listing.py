"""ListReservations: an account's reservations, oldest first, a page at a time.

Page tokens (AIP-158) are bound to the query they came from: a token carries a
digest of (account_id, asset, state) next to its position, so it is refused
with another query. Its size does not depend on the query (the digest is
fixed-length), so every token the server makes fits PAGE_TOKEN_LEN_MAX and is
accepted back; anything else (garbage, a token of another query or RPC, a
forged position) is INVALID_ARGUMENT naming page_token, never INTERNAL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ledger.domain import commands as c
from ledger.domain import errors, limits
from ledger.domain.errors import FieldViolation
from ledger.domain.model import Reservation, ReservationState

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

    def _digest(self) -> str:
        state = self.state.value if self.state is not None else ""
        raw = json.dumps(["ListReservations", self.account_id, self.asset, state])
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def encode_token(self, last: Reservation) -> str:
        """The token of the page after `last`."""
        position_us = (last.created_at - _EPOCH) // _MICROSECOND
        raw = json.dumps(
            {"q": self._digest(), "t": position_us, "r": last.reservation_id},
            separators=(",", ":"),
        )
        return base64.urlsafe_b64encode(raw.encode()).decode()

    def decode_token(self, token: str) -> tuple[datetime, str] | None:
        """The position after which the page starts; None for the first page.

        Errors: InvalidArgument (page_token) for any token this query did not make.
        """
        if not token:
            return None
        bad = errors.InvalidArgument(
            [
                FieldViolation(
                    "page_token",
                    "is not a token returned by ListReservations for this account_id,"
                    " asset and state",
                )
            ]
        )
        if len(token) > limits.PAGE_TOKEN_LEN_MAX:
            raise bad
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeError, RecursionError) as exc:
            raise bad from exc
        if not isinstance(data, dict) or data.get("q") != self._digest():
            raise bad
        position_us, reservation_id = data.get("t"), data.get("r")
        if (
            not isinstance(position_us, int)
            or isinstance(position_us, bool)
            or not 0 <= position_us <= _POSITION_US_MAX
            or not isinstance(reservation_id, str)
            or not c.is_uuid(reservation_id)
        ):
            raise bad
        return _EPOCH + position_us * _MICROSECOND, reservation_id
