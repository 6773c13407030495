"""The state of a `client.reservation(...)` block: what was held and what was used."""

from __future__ import annotations

from creditledger_client.models import Reservation, ReservationResult


class Hold:
    """Credits reserved for the duration of a `with` block.

    Call `use(n)` as the work consumes credits. Leaving the block normally
    settles exactly what was used (final, so the rest goes back to available);
    leaving it with an exception releases the whole hold. `result` is the
    outcome of that settle or release once the block has ended.
    """

    def __init__(self, reservation: Reservation, *, replayed: bool) -> None:
        self.reservation = reservation
        self.replayed = replayed
        self.used = 0
        self.result: ReservationResult | None = None

    @property
    def reservation_id(self) -> str:
        """The server's id of the reservation."""
        return self.reservation.reservation_id

    @property
    def unused(self) -> int:
        """Held credits not used yet."""
        return self.reservation.amount - self.used

    def use(self, amount: int) -> None:
        """Records that `amount` credits were consumed; raises ValueError past the hold."""
        if amount <= 0:
            raise ValueError(f"use() takes a positive amount, got {amount}")
        if amount > self.unused:
            raise ValueError(
                f"use({amount}) exceeds the hold: {self.unused} of {self.reservation.amount} unused"
            )
        self.used += amount
