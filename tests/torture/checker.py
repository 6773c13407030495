"""After healing: resolve what is unknown, then compare the ledger with the acknowledged history.

The model is built from the operations that were acknowledged OK (after the
unknown ones were resolved by replaying their keys). What the server holds must
equal it exactly: per reservation (settled, refunded, caps, state), per balance
(granted, settled, refunded, reserved, available), and in the journal (each
effect once, no effect nobody was told about).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from creditledger.v1 import ledger_pb2

from tests.torture.history import Op
from tests.torture.rpc import call_aio
from tests.torture.server import LedgerServer, health_status, run_verify
from tests.torture.workload import METHOD_BY_KIND, Workload

RECOVERY_TIMEOUT_S = 45.0
SWEEP_GRACE_S = 6.0
READ_CONCURRENCY = 24
AVAILABLE = ledger_pb2.Entry.Bucket.BUCKET_AVAILABLE
HELD = ledger_pb2.Entry.Bucket.BUCKET_HELD
Key = tuple[str, str]


@dataclass
class Expected:
    """What the acknowledged history implies."""

    granted: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    grants: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    settled: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refunded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    released_at_least: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    closed_by: dict[str, int] = field(default_factory=dict)
    ops_by_reservation: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))


def expected_from(ops: list[Op]) -> Expected:
    exp = Expected()
    for op in ops:
        if op.status != "ok":
            continue
        if op.kind == "grant":
            exp.granted[(op.account, op.asset)] += op.amount
            exp.grants[(op.account, op.asset)] += 1
            continue
        rid = op.reservation_ids.get("") if op.kind == "charge" else op.reservation_id
        if rid:
            exp.ops_by_reservation[rid].append(op.op_id)
        if op.kind in ("charge", "settle") and rid:
            exp.settled[rid] += op.amount
            if op.kind == "charge" or op.final:
                exp.closed_by[rid] = op.op_id
        elif op.kind == "release":
            exp.released_at_least[op.reservation_id] += op.amount
        elif op.kind == "refund":
            exp.refunded[op.reservation_id] += op.amount
    return exp


class Checker:
    def __init__(
        self,
        workload: Workload,
        servers: list[LedgerServer],
        database_url: str,
        server_source: Path | None = None,
    ) -> None:
        self.server_source = server_source
        self.w = workload
        self.servers = servers
        self.database_url = database_url
        self.stub = next(iter(workload.stubs.values()))
        self.sem = asyncio.Semaphore(READ_CONCURRENCY)
        self.verify_output = ""

    def violation(self, kind: str, detail: str, op_ids: list[int] | None = None) -> None:
        self.w.violation(kind, detail)
        self.w.violations[-1].op_ids = op_ids or []

    # ---- phases ------------------------------------------------------------------

    async def recovered(self) -> None:
        """Each server answers again, with no help beyond the faults' own undoing."""
        for server in self.servers:
            deadline = time.monotonic() + RECOVERY_TIMEOUT_S
            status = ""
            while time.monotonic() < deadline:
                status = await asyncio.to_thread(health_status, server.target)
                if status == "SERVING":
                    stub = self.w.stubs[server.target]
                    req = ledger_pb2.GetBalanceRequest(
                        account_id=self.w.account_ids[0], asset="crm_credits"
                    )
                    result = await call_aio(stub.GetBalance, req, 3.0)
                    if result.ok:
                        break
                    status = f"SERVING but GetBalance {result.describe()}"
                await asyncio.sleep(0.5)
            else:
                self.violation(
                    "no_recovery", f"{server.name}: {status} after {RECOVERY_TIMEOUT_S}s"
                )

    async def resolve_unknowns(self) -> int:
        """Replay every unknown-outcome op with its key until it answers."""
        unknown = [op for op in self.w.ops if op.status == "unknown"]
        rng = random.Random(self.w.cfg.seed + 7)

        async def resolve(op: Op) -> None:
            async with self.sem:
                op.notes.append("resolution")
                op.status = "pending"
                await self.w.execute(op, rng, budget_s=60)
                if op.acknowledged:
                    op.resolved = True
                else:
                    self.violation(
                        "unresolved", f"op {op.op_id} {op.kind} still unknown", [op.op_id]
                    )

        await asyncio.gather(*(resolve(op) for op in unknown))
        await self.recheck_internal_errors()
        return sum(op.resolved for op in unknown)

    async def recheck_internal_errors(self) -> None:
        """Replay the keys of ops answered INTERNAL/UNKNOWN (already violations).

        INTERNAL claims the command failed. If its key now replays a success, the
        command had committed: a worse violation, and the model takes the real
        outcome so that the rest of the checks are not polluted by it.
        """
        suspects = [
            op for op in self.w.ops if op.status == "refused" and op.code in ("INTERNAL", "UNKNOWN")
        ]
        rng = random.Random(self.w.cfg.seed + 13)
        for op in suspects:
            first = op.code
            op.notes.append(f"answered {first}; key replayed after healing")
            op.status = "pending"
            await self.w.execute(op, rng, budget_s=60)
            if op.status == "ok" and op.replayed:
                self.violation(
                    "internal_but_committed",
                    f"op {op.op_id} {op.kind} was answered {first} but had committed: its key replays OK",
                    [op.op_id],
                )

    async def replay_sample(self, count: int = 200) -> None:
        """Replays after healing: the same outcomes, and (checked later) no new effect."""
        rng = random.Random(self.w.cfg.seed + 11)
        give_up = time.monotonic() + 90
        for _ in range(count):
            if time.monotonic() > give_up:
                break
            await self.w.probe_replay(rng, -3)

    async def wait_for_expiries(self) -> None:
        """Let the sweeper expire every short-lived reservation and lot before reading."""
        latest = max(
            (
                r.expires_at
                for r in self.w.reservations.values()
                if r.expires_at < time.time() + 600
            ),
            default=0.0,
        )
        if self.w.expiring_lots:
            latest = max(latest, time.time() + 30)  # lots expire within 30 s of their grant
        delay = latest + SWEEP_GRACE_S - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def verify(self) -> None:
        code, output = run_verify(self.database_url, cwd=self.server_source)
        self.verify_output = output
        if code != 0:
            self.violation("ledger_verify", f"exit {code}: {output[-3000:]}")

    async def check_database(self) -> str:
        """Straight from the tables: keys and reservations against the history.

        Every acknowledged key has its one record, under the method that used
        it; no record and no reservation exists that the history cannot explain.
        Returns a note when the schema is not the one this knows (then skipped).
        """
        try:
            conn = await asyncpg.connect(self.database_url, timeout=10)
        except Exception as err:
            return f"database checks skipped: {err!r}"
        try:
            records = {
                r["key"]: r["method"]
                for r in await conn.fetch("SELECT key, method FROM idempotency")
            }
            stored = {
                str(r["reservation_id"])
                for r in await conn.fetch("SELECT reservation_id FROM reservations")
            }
        except asyncpg.PostgresError as err:
            return f"database checks skipped: {err!r}"
        finally:
            await conn.close()
        by_key = {op.key: op for op in self.w.ops}
        for op in self.w.ops:
            recordable = op.status == "ok" or op.code in ("FAILED_PRECONDITION", "NOT_FOUND")
            if recordable and records.get(op.key) != METHOD_BY_KIND[op.kind]:
                self.violation(
                    "key_not_recorded",
                    f"op {op.op_id} {op.kind} {op.code}: record {records.get(op.key)!r}",
                    [op.op_id],
                )
        prefix = f"t{self.w.cfg.seed}-"
        strays = [k for k in records if k.startswith(prefix) and k not in by_key]
        if strays:
            self.violation(
                "unknown_key_recorded",
                f"{len(strays)} keys recorded that no op sent, e.g. {strays[:3]}",
            )
        phantoms = stored - set(self.w.reservations)
        if phantoms:
            self.violation(
                "phantom_reservation",
                f"{len(phantoms)} reservations in the table that no acknowledged op made, e.g. {sorted(phantoms)[:3]}",
            )
        return f"database: {len(records)} key records, {len(stored)} reservations, all explained"

    # ---- reading the ledger --------------------------------------------------------

    async def read_account(self, account: str) -> tuple[Any, list[Any]]:
        async with self.sem:
            result = await call_aio(
                self.stub.GetAccount, ledger_pb2.GetAccountRequest(account_id=account), 30
            )
            if not result.ok:
                raise RuntimeError(f"GetAccount {account}: {result.describe()} {result.message}")
            entries: list[Any] = []
            token = ""
            while True:
                req = ledger_pb2.ListEntriesRequest(
                    account_id=account, page_size=1000, page_token=token
                )
                page = await call_aio(self.stub.ListEntries, req, 30)
                if not page.ok:
                    raise RuntimeError(f"ListEntries {account}: {page.describe()} {page.message}")
                body: Any = page.response
                entries.extend(body.entries)
                token = body.next_page_token
                if not token:
                    break
            found: Any = result.response
            return found.account, entries

    async def read_reservation(self, rid: str) -> Any:
        async with self.sem:
            result = await call_aio(
                self.stub.GetReservation, ledger_pb2.GetReservationRequest(reservation_id=rid), 30
            )
            if not result.ok:
                return result.describe()
            body: Any = result.response
            return body.reservation

    # ---- the comparison ------------------------------------------------------------

    async def check_ledger(self) -> None:
        exp = expected_from(self.w.ops)
        rids = sorted(self.w.reservations)
        reservations = dict(
            zip(rids, await asyncio.gather(*(self.read_reservation(r) for r in rids)), strict=True)
        )
        accounts = dict(
            zip(
                self.w.account_ids,
                await asyncio.gather(*(self.read_account(a) for a in self.w.account_ids)),
                strict=True,
            )
        )
        self.check_reservations(exp, reservations)
        for account, (acct, entries) in accounts.items():
            self.check_account(exp, account, acct, entries, reservations)

    def check_reservations(self, exp: Expected, reservations: dict[str, Any]) -> None:
        now = time.time()
        for rid, r in reservations.items():
            ops = exp.ops_by_reservation.get(rid, [])
            if isinstance(r, str):
                self.violation("acked_reservation_missing", f"GetReservation {rid}: {r}", ops)
                continue
            where = f"{rid} ({r.account_id}/{r.asset} amount={r.amount} settled={r.settled} released={r.released} expired={r.expired} refunded={r.refunded} state={ledger_pb2.Reservation.State.Name(r.state)})"
            if r.settled != exp.settled[rid]:
                self.violation(
                    "settled_mismatch",
                    f"{where}: acknowledged settles sum to {exp.settled[rid]}",
                    ops,
                )
            if r.refunded != exp.refunded[rid]:
                self.violation(
                    "refunded_mismatch",
                    f"{where}: acknowledged refunds sum to {exp.refunded[rid]}",
                    ops,
                )
            # A release of credits whose lot had expired writes them off (`expired`).
            if r.released + r.expired < exp.released_at_least[rid]:
                self.violation(
                    "released_mismatch",
                    f"{where}: acknowledged releases sum to {exp.released_at_least[rid]}",
                    ops,
                )
            if (
                r.settled + r.released + r.expired > r.amount
                or r.refunded > r.settled
                or r.remaining != r.amount - r.settled - r.released - r.expired
            ):
                self.violation("reservation_caps", where, ops)
            if rid in exp.closed_by and r.state != ledger_pb2.Reservation.State.STATE_CLOSED:
                self.violation(
                    "final_settle_not_closed", f"{where}: closed by op {exp.closed_by[rid]}", ops
                )
            if r.state != ledger_pb2.Reservation.State.STATE_OPEN and r.remaining != 0:
                self.violation("closed_with_remaining", where, ops)
            expires = r.expires_at.seconds + r.expires_at.nanos / 1e9
            if r.state == ledger_pb2.Reservation.State.STATE_OPEN and expires < now - SWEEP_GRACE_S:
                self.violation(
                    "overdue_open_reservation",
                    f"{where}: expired {now - expires:.1f}s ago, still open",
                    ops,
                )
            if r.state == ledger_pb2.Reservation.State.STATE_EXPIRED and expires > now:
                self.violation("expired_early", f"{where}: expires_at is in the future", ops)

    def check_account(
        self,
        exp: Expected,
        account: str,
        acct: Any,
        entries: list[Any],
        reservations: dict[str, Any],
    ) -> None:
        balances = {b.asset: b for b in acct.balances}
        by_asset: dict[str, list[Any]] = defaultdict(list)
        for e in entries:
            by_asset[e.asset].append(e)
        assets = set(self.w.cfg.assets) | set(balances) | set(by_asset)
        for asset in sorted(assets):
            b = balances.get(asset)
            if b is None:
                b = ledger_pb2.Balance(account_id=account, asset=asset)
            self.check_balance(exp, account, asset, b, by_asset[asset], reservations)

    def check_balance(
        self,
        exp: Expected,
        account: str,
        asset: str,
        b: Any,
        entries: list[Any],
        reservations: dict[str, Any],
    ) -> None:
        key = (account, asset)
        where = f"{account}/{asset} (available={b.available} reserved={b.reserved} granted={b.granted} settled={b.settled} refunded={b.refunded} expired={b.expired})"
        mine = [
            r
            for r in reservations.values()
            if not isinstance(r, str) and (r.account_id, r.asset) == key
        ]
        open_remaining = sum(
            r.remaining for r in mine if r.state == ledger_pb2.Reservation.State.STATE_OPEN
        )
        settled = sum(r.settled for r in mine)
        refunded = sum(r.refunded for r in mine)
        if b.available < 0 or b.reserved < 0:
            self.violation("negative_balance", where)
        if b.granted != exp.granted[key]:
            self.violation(
                "granted_mismatch", f"{where}: acknowledged grants sum to {exp.granted[key]}"
            )
        if b.settled != settled:
            self.violation(
                "balance_settled_mismatch", f"{where}: its reservations' settled sum to {settled}"
            )
        if b.refunded != refunded:
            self.violation(
                "balance_refunded_mismatch",
                f"{where}: its reservations' refunded sum to {refunded}",
            )
        if b.reserved != open_remaining:
            self.violation(
                "reserved_mismatch",
                f"{where}: its open reservations hold {open_remaining} (an unknown reservation?)",
            )
        if key not in self.w.expiring_lots and b.expired != 0:
            self.violation("expired_without_expiring_lots", where)
        implied = b.granted - b.settled + b.refunded - b.expired - b.reserved
        if b.available != implied:
            self.violation(
                "available_mismatch",
                f"{where}: granted-settled+refunded-expired-reserved = {implied}",
            )
        self.check_entries(key, where, b, entries, exp, reservations)

    def check_entries(
        self,
        key: Key,
        where: str,
        b: Any,
        entries: list[Any],
        exp: Expected,
        reservations: dict[str, Any],
    ) -> None:
        avail = sum(e.amount for e in entries if e.bucket == AVAILABLE)
        held = sum(e.amount for e in entries if e.bucket == HELD)
        if (avail, held) != (b.available, b.reserved):
            self.violation(
                "entries_balance_mismatch", f"{where}: entries sum available={avail} held={held}"
            )
        grant_txs = {
            e.transaction_id
            for e in entries
            if e.movement == ledger_pb2.Entry.Movement.MOVEMENT_GRANT
        }
        if len(grant_txs) != exp.grants[key]:
            self.violation(
                "grant_count_mismatch",
                f"{where}: {len(grant_txs)} grant transactions, {exp.grants[key]} acknowledged",
            )
        per_rid: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for e in entries:
            if e.reservation_id:
                per_rid[e.reservation_id][e.movement] += e.amount
        for rid, sums in per_rid.items():
            r = reservations.get(rid)
            if r is None:
                self.violation(
                    "phantom_reservation",
                    f"{where}: journal has reservation {rid} that no acknowledged op made",
                )
                continue
            if isinstance(r, str):
                continue
            if -sums[ledger_pb2.Entry.Movement.MOVEMENT_SETTLE] != r.settled:
                self.violation(
                    "settle_entries_mismatch",
                    f"{rid}: settle entries {-sums[ledger_pb2.Entry.Movement.MOVEMENT_SETTLE]} vs settled {r.settled}",
                    exp.ops_by_reservation.get(rid),
                )
            if sums[ledger_pb2.Entry.Movement.MOVEMENT_REFUND] != r.refunded:
                self.violation(
                    "refund_entries_mismatch",
                    f"{rid}: refund entries {sums[ledger_pb2.Entry.Movement.MOVEMENT_REFUND]} vs refunded {r.refunded}",
                    exp.ops_by_reservation.get(rid),
                )
