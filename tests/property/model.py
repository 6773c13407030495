"""A small in-memory model of the ledger's rules, for the stateful property test.

It knows nothing of the server's code: it is the rules as the README and
docs/design.md state them, written again as plainly as possible. Time is
explicit: every operation happens at `now`, and the state of an account at
an instant is what `view(now)` says, whether or not anything swept.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta

INT64_MAX = 2**63 - 1
_ids = itertools.count(1)


@dataclass
class MLot:
    amount: int
    remaining: int
    priority: int
    expires_at: datetime | None
    created_at: datetime
    seq: int = field(default_factory=lambda: next(_ids))

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def order(self) -> tuple[int, int, float, datetime, int]:
        never = 1 if self.expires_at is None else 0
        exp = self.expires_at.timestamp() if self.expires_at is not None else 0.0
        return (self.priority, never, exp, self.created_at, self.seq)


@dataclass
class MAlloc:
    lot: MLot
    held: int
    settled: int = 0
    released: int = 0
    written_off: int = 0
    refunded: int = 0

    @property
    def remaining(self) -> int:
        return self.held - self.settled - self.released - self.written_off


@dataclass
class MRes:
    account: str
    amount: int
    expires_at: datetime
    allocs: list[MAlloc]
    state: str = "open"  # open, closed, expired
    settled: int = 0
    released: int = 0
    written_off: int = 0
    refunded: int = 0

    @property
    def remaining(self) -> int:
        return self.amount - self.settled - self.released - self.written_off


@dataclass
class MBalance:
    granted: int = 0
    settled: int = 0
    refunded: int = 0
    expired: int = 0


class Refused(Exception):
    def __init__(self, reason: str, available: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.available = available


class Model:
    def __init__(self, refund_grace: timedelta) -> None:
        self.refund_grace = refund_grace
        self.lots: dict[str, list[MLot]] = {}
        self.res: dict[str, MRes] = {}
        self.stats: dict[str, MBalance] = {}

    # ------------------------------------------------------------ time

    def advance_to(self, now: datetime) -> None:
        """Apply what is due at `now`, each deadline as at its own instant: overdue
        holds (oldest first) go back to their lots, or are written off where the
        lot had expired by the hold's expiry; then due lots are written off."""
        due = sorted(
            (r for r in self.res.values() if r.state == "open" and r.expires_at <= now),
            key=lambda r: r.expires_at,
        )
        for r in due:
            self._give_back(r, r.remaining, r.expires_at)
            r.state = "expired"
        for account, lots in self.lots.items():
            for lot in lots:
                if lot.remaining and lot.expired(now):
                    self.stats[account].expired += lot.remaining
                    lot.remaining = 0

    def _give_back(self, r: MRes, amount: int, now: datetime) -> None:
        """Back to the lots, as at `now`; parts of lots expired by then are written off."""
        left = amount
        for a in r.allocs:
            take = min(a.remaining, left)
            if not take:
                continue
            left -= take
            if a.lot.expired(now):
                a.written_off += take
                r.written_off += take
                self.stats[r.account].expired += take
            else:
                a.released += take
                r.released += take
                a.lot.remaining += take
        assert left == 0

    # ------------------------------------------------------------ reads

    def available(self, account: str) -> int:
        return sum(lot.remaining for lot in self.lots.get(account, []))

    def reserved(self, account: str) -> int:
        return sum(
            r.remaining for r in self.res.values() if r.account == account and r.state == "open"
        )

    # ------------------------------------------------------------ commands

    def create(self, account: str) -> None:
        self.lots[account] = []
        self.stats[account] = MBalance()

    def grant(
        self, now: datetime, account: str, amount: int, expires_at: datetime | None, priority: int
    ) -> None:
        self.advance_to(now)
        self.lots[account].append(MLot(amount, amount, priority, expires_at, now))
        self.stats[account].granted += amount

    def _draw(self, account: str, amount: int) -> list[MAlloc]:
        allocs = []
        left = amount
        for lot in sorted(self.lots[account], key=MLot.order):
            if not lot.remaining:
                continue
            take = min(lot.remaining, left)
            lot.remaining -= take
            allocs.append(MAlloc(lot, take))
            left -= take
            if not left:
                break
        assert left == 0
        return allocs

    def reserve(self, now: datetime, account: str, amount: int, ttl: timedelta) -> MRes:
        self.advance_to(now)
        have = self.available(account)
        if have < amount:
            raise Refused("INSUFFICIENT_CREDITS", have)
        return MRes(account, amount, now + ttl, self._draw(account, amount))

    def reserve_group(
        self, now: datetime, legs: list[tuple[str, int]], ttl: timedelta
    ) -> list[MRes]:
        self.advance_to(now)
        needed: dict[str, int] = {}
        for account, amount in legs:
            needed[account] = needed.get(account, 0) + amount
            have = self.available(account)
            if have < needed[account]:
                raise Refused("INSUFFICIENT_CREDITS", have - (needed[account] - amount))
        return [MRes(a, amt, now + ttl, self._draw(a, amt)) for a, amt in legs]

    def charge(self, now: datetime, account: str, amount: int) -> MRes:
        self.advance_to(now)
        have = self.available(account)
        if have < amount:
            raise Refused("INSUFFICIENT_CREDITS", have)
        allocs = self._draw(account, amount)
        for a in allocs:
            a.settled = a.held
        self.stats[account].settled += amount
        return MRes(account, amount, now, allocs, state="closed", settled=amount)

    def _open(self, r: MRes) -> None:
        if r.state == "expired":
            raise Refused("RESERVATION_EXPIRED")
        if r.state == "closed":
            raise Refused("RESERVATION_CLOSED")

    def settle(self, now: datetime, r: MRes, amount: int, final: bool) -> None:
        self.advance_to(now)
        self._open(r)
        if amount > r.remaining:
            raise Refused("AMOUNT_EXCEEDS_REMAINING")
        left = amount
        for a in r.allocs:
            take = min(a.remaining, left)
            a.settled += take
            left -= take
        r.settled += amount
        self.stats[r.account].settled += amount
        if final and r.remaining:
            self._give_back(r, r.remaining, now)
        if not r.remaining:
            r.state = "closed"

    def release(self, now: datetime, r: MRes, amount: int) -> None:
        self.advance_to(now)
        self._open(r)
        amount = amount or r.remaining
        if amount > r.remaining:
            raise Refused("AMOUNT_EXCEEDS_REMAINING")
        self._give_back(r, amount, now)
        if not r.remaining:
            r.state = "closed"

    def refund(self, now: datetime, r: MRes, amount: int) -> None:
        self.advance_to(now)
        if amount > r.settled - r.refunded:
            raise Refused("AMOUNT_EXCEEDS_SETTLED")
        left = amount
        for a in reversed(r.allocs):  # last drawn, first given back (rules.refund)
            take = min(a.settled - a.refunded, left)
            if not take:
                continue
            a.refunded += take
            left -= take
            if a.lot.expired(now):
                lot = MLot(take, take, a.lot.priority, now + self.refund_grace, now)
                self.lots[r.account].append(lot)
            else:
                a.lot.remaining += take
        r.refunded += amount
        self.stats[r.account].refunded += amount

    def deadlines(self) -> list[datetime]:
        """Every instant at which something becomes due (for exact clock jumps)."""
        out = [
            lot.expires_at
            for lots in self.lots.values()
            for lot in lots
            if lot.expires_at is not None and lot.remaining
        ]
        out += [r.expires_at for r in self.res.values() if r.state == "open"]
        return out
