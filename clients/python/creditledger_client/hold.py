"""The state of a `client.reservation(...)` block: what was held and what was used."""

from __future__ import annotations

from typing import Literal

from creditledger_client.models import Reservation, ReservationResult, ReservationState

#: What leaving a reservation block with an exception does: "settle" (the
#: default) pays for what `use()` recorded and releases the rest; "release"
#: gives the whole hold back, for work that is worthless unless it completes.
HoldOnError = Literal["settle", "release"]


def settle_key(reservation_id: str) -> str:
    """The idempotency key of the helper's final Settle of a reservation.

    Derived from the reservation, so a rerun of the block (same reserve key,
    hence the same reservation) replays the settle instead of failing
    RESERVATION_CLOSED.
    """
    return f"hold:{reservation_id}:settle"


def release_key(reservation_id: str) -> str:
    """The idempotency key of the helper's Release of a reservation."""
    return f"hold:{reservation_id}:release"


class Hold:
    """Credits reserved for the duration of a `with` block.

    Call `use(n)` as the work consumes credits. Leaving the block normally
    settles exactly what was used (final, so the rest goes back to available).
    Leaving it with an exception does the same, so work already delivered is
    paid for, unless `on_error` is "release" (set by the caller, also inside
    the block): then the whole hold goes back. The settle and release carry
    keys derived from the reservation, so rerunning the block with the same
    reserve key is safe. `result` is the outcome of that settle or release.

    When the reserve was a replay and the reservation is no longer open (an
    earlier run of the block finished it, or it expired), `finished` is True,
    `reservation` is its current state, and nothing is settled or released
    on exit: do not do the work again. `use()` then raises.
    """

    def __init__(
        self,
        reservation: Reservation,
        *,
        replayed: bool,
        on_error: HoldOnError = "settle",
    ) -> None:
        self.reservation = reservation
        self.replayed = replayed
        self.on_error: HoldOnError = on_error
        self.used = 0
        self.result: ReservationResult | None = None

    @property
    def reservation_id(self) -> str:
        """The server's id of the reservation."""
        return self.reservation.reservation_id

    @property
    def finished(self) -> bool:
        """True when the reservation was already closed or expired as the block began."""
        return self.reservation.state is not ReservationState.OPEN

    @property
    def unused(self) -> int:
        """Held credits not used yet (of what the reservation still held as the block began)."""
        return self.reservation.remaining - self.used

    @property
    def outcome(self) -> Reservation | None:
        """The reservation as the block left it; None while the block runs."""
        if self.result is not None:
            return self.result.reservation
        return self.reservation if self.finished else None

    def use(self, amount: int) -> None:
        """Records that `amount` credits were consumed.

        Raises ValueError past the hold, RuntimeError on a finished hold.
        """
        if self.finished:
            raise RuntimeError(
                f"reservation {self.reservation_id} is already "
                f"{self.reservation.state.name.lower()} (an earlier run finished it): "
                "check hold.finished before doing the work"
            )
        if amount <= 0:
            raise ValueError(f"use() takes a positive amount, got {amount}")
        if amount > self.unused:
            raise ValueError(
                f"use({amount}) exceeds the hold: {self.unused} of {self.reservation.remaining} unused"
            )
        self.used += amount
