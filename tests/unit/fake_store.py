"""An in-memory Store (ledger/service/ports.py) for proving the rules, the writer
and the stored outcomes in memory, the way Cosmic Python's FakeUnitOfWork does.

It reads what the batch load statement (storage/postgres.py `_LOAD`) reads, with
the same spend-order prefix of live lots, and commits a batch only when its
block exits cleanly. Every row crosses the boundary through domain/codec.py, as
it does through jsonb, so nothing is shared between a batch and the tables.
`violations()` checks in memory what `ledger verify` checks in SQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.domain import codec, limits
from ledger.domain.model import (
    Balance,
    Bucket,
    Lot,
    Movement,
    Posting,
    Reservation,
    ReservationState,
)
from ledger.domain.workingset import PairKey, WorkingSet, saturating
from ledger.service.ports import IdempotencyRecord, SerializationConflict
from tests.support.units import SavesInLine


@dataclass
class Tables:
    accounts: set[str] = field(default_factory=set)
    balances: dict[PairKey, dict[str, Any]] = field(default_factory=dict)
    lots: dict[str, dict[str, Any]] = field(default_factory=dict)
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: list[tuple[Posting, datetime]] = field(default_factory=list)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)


class FakeBatch(SavesInLine):
    def __init__(self, tables: Tables) -> None:
        self._t = tables
        self.pending: list[Callable[[], None]] = []

    def _lots_of(self, pair: PairKey) -> list[Lot]:
        lots = [codec.lot_from(d) for d in self._t.lots.values()]
        return [lot for lot in lots if (lot.account_id, lot.asset) == pair and lot.remaining > 0]

    async def load(
        self,
        ws: WorkingSet,
        keys: list[tuple[str, str]],
        reservation_ids: set[str],
        pairs: set[PairKey],
        account_ids: set[str],
        whole_pairs: set[PairKey],
        lot_ids: frozenset[str] = frozenset(),
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        t = self._t
        byid = [
            codec.reservation_from(t.reservations[r])
            for r in reservation_ids
            if r in t.reservations
        ]
        bylot = [codec.lot_from(t.lots[i]) for i in lot_ids if i in t.lots]
        void_pairs = {(lot.account_id, lot.asset) for lot in bylot}
        pairs = pairs | {(r.account_id, r.asset) for r in byid} | void_pairs
        res = {r.reservation_id: r for r in byid}
        for d in t.reservations.values():
            r = codec.reservation_from(d)
            if (
                (r.account_id, r.asset) in pairs
                and r.state is ReservationState.OPEN
                and (r.expires_at <= ws.now or (r.account_id, r.asset) in void_pairs)
            ):
                res.setdefault(r.reservation_id, r)
        for r in res.values():
            ws.add_reservation(r)
        ws.accounts |= account_ids & t.accounts
        for pair in pairs:
            if pair in t.balances:
                ws.balances[pair] = codec.balance_from(t.balances[pair])
        wanted = {a.lot_id for r in res.values() for a in r.allocations}
        wanted |= {lot.lot_id for lot in bylot}
        for pair in pairs:
            live = sorted(self._lots_of(pair), key=Lot.spend_order)
            for lot in live:
                if pair in whole_pairs or (lot.expires_at is not None and lot.expires_at <= ws.now):
                    wanted.add(lot.lot_id)
            first = live[: limits.LOTS_LOADED_FIRST]
            wanted |= {lot.lot_id for lot in first}
            if len(first) >= limits.LOTS_LOADED_FIRST and pair not in whole_pairs:
                ws.lot_horizon[pair] = first[-1].spend_order()
        for lot_id in wanted:
            ws.add_lot(codec.lot_from(t.lots[lot_id]))
        return {k: t.idempotency[k] for k in keys if k in t.idempotency}

    async def save(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> None:
        for r in records:
            if (r.caller, r.key) in self._t.idempotency:
                raise SerializationConflict("23505")
        rows = (
            {k: codec.balance_to_dict(ws.balances[k]) for k in ws.dirty_balances},
            {i: codec.lot_to_dict(ws.lots[i]) for i in ws.dirty_lots},
            {i: codec.reservation_to_dict(ws.reservations[i]) for i in ws.dirty_reservations},
        )
        postings = [(p, ws.now) for p in ws.postings]

        def commit() -> None:
            self._t.balances.update(rows[0])
            self._t.lots.update(rows[1])
            self._t.reservations.update(rows[2])
            self._t.entries.extend(postings)
            self._t.idempotency.update({(r.caller, r.key): r for r in records})

        self.pending.append(commit)
        ws.mark_saved()


class FakeStore:
    """What the Writer needs of a Store, in memory."""

    reachable = True

    def __init__(self) -> None:
        self.tables = Tables()

    @asynccontextmanager
    async def batch(
        self, more_waiting: Callable[[], bool] | None = None
    ) -> AsyncIterator[FakeBatch]:
        unit = FakeBatch(self.tables)
        yield unit  # an exception inside the block commits nothing
        for commit in unit.pending:
            commit()

    def create_account(self, account_id: str) -> None:
        self.tables.accounts.add(account_id)

    # ------------------------------------------------------------ verify, in memory

    def violations(self, now: datetime) -> list[str]:
        """What `ledger verify` checks (ledger/storage/verify.py), on the tables."""
        t = self.tables
        out: list[str] = []
        per_tx: dict[tuple[str, str], int] = {}
        derived: dict[PairKey, Balance] = {}
        changes: dict[PairKey, set[str]] = {}
        for p, at in t.entries:
            per_tx[(p.transaction_id, p.asset)] = (
                per_tx.get((p.transaction_id, p.asset), 0) + p.amount
            )
            if p.bucket is Bucket.SYSTEM:
                continue
            b = derived.setdefault((p.account_id, p.asset), Balance(p.account_id, p.asset))
            changes.setdefault((p.account_id, p.asset), set()).add(p.transaction_id)
            # One version per change, and each change is one ledger transaction.
            b.version = len(changes[(p.account_id, p.asset)])
            if p.bucket is Bucket.AVAILABLE:
                b.available += p.amount
            else:
                b.reserved += p.amount
            if p.movement is Movement.GRANT:
                b.granted += p.amount
            elif p.movement is Movement.SETTLE:
                b.settled -= p.amount
            elif p.movement is Movement.REFUND:
                b.refunded += p.amount
            elif p.movement is Movement.LOT_EXPIRY:
                b.expired -= p.amount
            if (
                p.bucket is Bucket.AVAILABLE
                and p.amount < 0
                and p.movement in (Movement.RESERVE, Movement.SETTLE)
            ):
                lot = codec.lot_from(t.lots[p.lot_id])
                if lot.expires_at is not None and at >= lot.expires_at:
                    out.append(f"nothing_spent_from_expired_lots: {p}")
        out += [f"transactions_balance: {k}={v}" for k, v in per_tx.items() if v]
        for pair, b in derived.items():
            for name in ("granted", "settled", "refunded", "expired"):
                setattr(b, name, saturating(getattr(b, name)))
            stored = codec.balance_from(t.balances[pair]) if pair in t.balances else Balance(*pair)
            if _from_entries(stored) != _from_entries(b):
                out.append(f"balances_match_entries: {stored} != {b}")
            if b.available < 0 or b.reserved < 0:
                out.append(f"available_not_negative: {b}")
        live: dict[PairKey, int] = {}
        for d in t.lots.values():
            lot = codec.lot_from(d)
            if not 0 <= lot.remaining <= lot.amount:
                out.append(f"lot_bounds: {lot}")
            pair = (lot.account_id, lot.asset)
            live[pair] = live.get(pair, 0) + lot.remaining
        held: dict[PairKey, int] = {}
        for d in t.reservations.values():
            out += _reservation_violations(codec.reservation_from(d), held)
        for pair in set(live) | set(held) | set(t.balances):
            b = codec.balance_from(t.balances[pair]) if pair in t.balances else Balance(*pair)
            if b.available != live.get(pair, 0):
                out.append(f"available_matches_lots: {pair} {b.available} != {live.get(pair, 0)}")
            if b.reserved != held.get(pair, 0):
                out.append(
                    f"reserved_matches_open_reservations: {pair} {b.reserved} != {held.get(pair, 0)}"
                )
        return out


_ENTRY_FIELDS = ("available", "reserved", "granted", "settled", "refunded", "expired", "version")


def _from_entries(b: Balance) -> tuple[object, ...]:
    """What a balance's entries imply (limits and cap counters are not entries)."""
    return (b.account_id, b.asset, *(getattr(b, name) for name in _ENTRY_FIELDS), b.debt)


def _reservation_violations(r: Reservation, held: dict[PairKey, int]) -> list[str]:
    out = []
    if r.state is ReservationState.OPEN:
        for a in r.allocations:  # each part on its lot's account (split spends)
            pair = (r.account_of(a), r.asset)
            held[pair] = held.get(pair, 0) + a.remaining
    if r.settled + r.released + r.expired > r.amount or r.refunded > r.settled:
        out.append(f"reservation_caps: {r}")
    if r.state is not ReservationState.OPEN and r.remaining != 0:
        out.append(f"reservation_caps (closed holds nothing): {r}")
    sums = [
        sum(getattr(a, f) for a in r.allocations)
        for f in ("drawn", "settled", "released", "expired", "refunded")
    ]
    if sums != [r.amount, r.settled, r.released, r.expired, r.refunded]:
        out.append(f"reservation_allocations: {r} {sums}")
    return out
