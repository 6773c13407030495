"""The ledger's use cases, as the transport calls them.

Mutations are validated here, then run by the Writer (one SERIALIZABLE
transaction per batch, idempotency record inside it). Reads go straight to
the store and present overdue reservations and lots as already expired, so
that any read sees an expiry at once, before the sweeper has written it.

Every use case takes the caller's `Access` (default: the local caller with
every right). The permission is checked first; the account scope is checked
where the account is known: here for account-addressed reads, by the rules
inside the command's own transaction for mutations (the reservation's
account is only known once it is loaded). Out of scope reads as not found.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from ledger.domain import commands as c
from ledger.domain import errors, limits, rules, schedules
from ledger.domain.access import LOCAL, Access
from ledger.domain.errors import FieldViolation
from ledger.domain.model import (
    Account,
    BalanceAlert,
    BalanceView,
    BatchResult,
    BreakageLine,
    EntriesPage,
    GrantResult,
    GroupResult,
    Reservation,
    ReservationResult,
    Result,
    Schedule,
)
from ledger.observability import metrics
from ledger.service import asof, batching, groups, pagetoken, scope
from ledger.service import statement as statements
from ledger.service.clock import Clock
from ledger.service.listing import ReservationQuery, ReservationsPage
from ledger.service.ports import CommandSink, SerializationConflict, StorageUnavailable, Store
from ledger.service.stream import ChangeStream, decode_position

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _invalid(field: str, description: str) -> errors.InvalidArgument:
    return errors.InvalidArgument([FieldViolation(field, description)])


# What the store raises when it gave up; _storage_failure says what the caller gets.
_STORAGE_FAILURES = (StorageUnavailable, SerializationConflict)


def _storage_failure(exc: Exception) -> errors.LedgerError:
    """UNAVAILABLE; or ABORTED (CONTENTION) when every attempt the store made lost a
    serialization race (it re-runs such a unit itself, bounded). Nothing was done either way."""
    if isinstance(exc, SerializationConflict):
        metrics.RETRIES_EXHAUSTED.inc()
        return errors.Contention(
            "serialization conflicts persisted over every attempt; nothing was done, retry",
            {"attempts": str(exc.attempts)},
        )
    return errors.DatabaseUnavailable(
        "the database is unavailable; retry shortly", {"cause": str(exc)}
    )


class Ledger:
    def __init__(
        self,
        store: Store,
        writer: CommandSink,  # the local Writer, or the Election routing to the elected one
        clock: Clock,
        refund_grace: timedelta = timedelta(days=7),
    ) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        self._refund_grace = refund_grace
        # WatchTransactions (ledger.service.stream): reads only, any replica.
        self.stream = ChangeStream(store, clock)

    def _view(self) -> rules.WorkingSet:
        """A working set for a read: filled by the store, seen through rules.catch_up,
        never saved. Reads and rules see a pair at an instant the same way."""
        return rules.WorkingSet(now=self._clock.now(), refund_grace=self._refund_grace)

    async def execute(self, cmd: c.KeyedCommand, access: Access = LOCAL) -> tuple[Result, bool]:
        """Run a mutating command as `access.caller`. Returns (result, replayed).

        Errors: PermissionDenied; InvalidArgument; the business errors of the
        command (see ledger.domain.rules), with AccountNotFound or
        ReservationNotFound also for what lies outside the caller's scope;
        IdempotencyKeyReused; DatabaseUnavailable; WriterUnavailable; Contention.
        """
        cmd = self._admit(cmd, access)
        try:
            result, replayed = await self._writer.submit(cmd)
            if replayed:
                scope.check_replay(cmd, result, access)  # the scope as it is now
        except errors.LedgerError as exc:
            if exc.replayed:
                scope.check_replayed_error(cmd, exc, access)
            if exc.kind is not errors.Kind.UNAVAILABLE and exc.kind is not errors.Kind.ABORTED:
                metrics.REJECTIONS.labels(cmd.method, exc.reason).inc()
            if exc.replayed:
                metrics.REPLAYS.labels(cmd.method).inc()
            raise
        if replayed:
            metrics.REPLAYS.labels(cmd.method).inc()
        return await self._show_group_metadata(result), replayed

    def _admit(self, cmd: c.KeyedCommand, access: Access) -> c.KeyedCommand:
        """The command as it will run (scoped to the caller), once permitted and valid.

        Errors: PermissionDenied, InvalidArgument."""
        if access is not LOCAL:
            access.require(cmd.method)
            if cmd.caller != access.caller:
                raise errors.InvariantViolation("a command must carry its caller's id")
            if access.scope is not None:
                cmd = dataclasses.replace(cmd, scope=access.scope)
        cmd.validate()
        if isinstance(cmd, c.Grant) and cmd.expires_at is not None:
            # "In the future" is checked by the rules, after the idempotency lookup:
            # a late retry of an acknowledged Grant must replay, not be refused.
            now = self._clock.now()
            if cmd.expires_at > now + timedelta(seconds=limits.GRANT_EXPIRY_MAX_S):
                raise _invalid(
                    "expires_at",
                    f"must be within {limits.GRANT_EXPIRY_MAX_S // 86400} days (GRANT_EXPIRY_MAX_S)",
                )
        return cmd

    async def execute_batch(self, batch: c.Batch, access: Access = LOCAL) -> BatchResult:
        """Run SubmitBatch's commands as `access.caller`: each command is permitted,
        validated, replayed and answered exactly as its single call would be.

        Errors of the whole call: InvalidArgument (the batch's own limits);
        DatabaseUnavailable; Contention; for an atomic batch also the first
        failing command's own error, named by batching.atomic_failure (ErrorInfo
        metadata batch_index). A non-atomic batch answers each command's error
        in that command's outcome instead.
        """
        if access is not LOCAL and batch.caller != access.caller:
            raise errors.InvariantViolation("a batch must carry its caller's id")
        batch.validate()
        admitted: list[c.BatchCommand | errors.LedgerError] = []
        for i, cmd in enumerate(batch.commands):
            try:
                ready = self._admit(cmd, access)
            except errors.LedgerError as exc:
                metrics.REJECTIONS.labels(cmd.method, exc.reason).inc()
                if batch.atomic:
                    raise batching.atomic_failure(i, cmd, exc) from exc
                admitted.append(exc)
                continue
            if not isinstance(ready, c.BatchCommand):
                raise errors.InvariantViolation("admitting a command changed its type")
            admitted.append(ready)
        runnable = tuple(a for a in admitted if not isinstance(a, errors.LedgerError))
        ran: tuple[tuple[GrantResult | ReservationResult | errors.LedgerError, bool], ...] = ()
        if runnable:
            try:
                result, _ = await self._writer.submit(dataclasses.replace(batch, commands=runnable))
            except errors.LedgerError as exc:
                if exc.kind is not errors.Kind.UNAVAILABLE and exc.kind is not errors.Kind.ABORTED:
                    metrics.REJECTIONS.labels(batch.method, exc.reason).inc()
                raise
            if not isinstance(result, BatchResult) or len(result.outcomes) != len(runnable):
                raise errors.InvariantViolation("the writer answered a batch with another shape")
            ran = result.outcomes
        merged = _merge(admitted, ran, batch.commands)
        shown = [
            (await self._as_single_call(cmd, outcome, replayed, access), replayed)
            for cmd, (outcome, replayed) in zip(batch.commands, merged, strict=True)
        ]
        return BatchResult(tuple(shown))

    async def _as_single_call(
        self,
        cmd: c.BatchCommand,
        outcome: GrantResult | ReservationResult | errors.LedgerError,
        replayed: bool,
        access: Access,
    ) -> GrantResult | ReservationResult | errors.LedgerError:
        """What the command's single call answers: a replay seen through the scope
        as it is now, group legs with their group's metadata."""
        try:
            if isinstance(outcome, errors.LedgerError):
                if outcome.replayed:
                    scope.check_replayed_error(cmd, outcome, access)
                return outcome
            if replayed:
                scope.check_replay(cmd, outcome, access)
            shown = await self._show_group_metadata(outcome)
        except errors.LedgerError as exc:
            return exc
        if not isinstance(shown, GrantResult | ReservationResult):
            raise errors.InvariantViolation("a batch command's result changed its type")
        return shown

    async def _show_group_metadata(self, result: Result) -> Result:
        """Group legs show their group's metadata, stored once (ledger.service.groups)."""
        if isinstance(result, GroupResult):
            return groups.with_group_metadata(result)
        if isinstance(result, ReservationResult) and groups.needs_group_metadata(
            result.reservation
        ):
            res = dataclasses.replace(
                result.reservation,
                metadata=await self._group_metadata(result.reservation.group_id),
            )
            return ReservationResult(res, result.balance)
        return result

    async def _group_metadata(self, group_id: str) -> dict[str, str]:
        """Errors: DatabaseUnavailable, Contention."""
        ws = self._view()
        try:
            await self._store.snapshot(ws, group_id=group_id)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        return groups.group_metadata(
            [r for r in ws.reservations.values() if r.group_id == group_id]
        )

    async def create_account(
        self,
        account_id: str,
        metadata: dict[str, str],
        access: Access = LOCAL,
        parent_id: str = "",
    ) -> Account:
        """Errors: PermissionDenied (also for an id outside the caller's prefixes:
        that answer depends on the id alone, never on what exists), InvalidArgument,
        AccountExists, AccountNotFound (the parent, also outside the caller's
        scope), PoolDepthExceeded, DatabaseUnavailable, Contention."""
        access.require("CreateAccount")
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.metadata("metadata", metadata)
        if parent_id:
            v.account_id("parent_id", parent_id)
            if parent_id == account_id:
                v.add("parent_id", "must not be the account itself")
        v.raise_if_any()
        if parent_id and not access.covers(parent_id):
            raise errors.AccountNotFound(
                f"parent account {parent_id} not found",
                {"account_id": parent_id, "field": "parent_id"},
            )
        if not access.covers(account_id):
            raise errors.PermissionDenied(
                f"caller {access.caller} may only create accounts whose id starts with one of"
                " its account prefixes",
                {"method": "CreateAccount"},
            )
        try:
            account = await self._store.create_account(
                account_id, metadata, self._clock.now(), parent_id
            )
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if account is None:
            raise errors.AccountExists(
                f"account {account_id} already exists", {"account_id": account_id}
            )
        return account

    async def get_account(self, account_id: str, access: Access = LOCAL) -> Account:
        """Errors: PermissionDenied, InvalidArgument, AccountNotFound, DatabaseUnavailable."""
        access.require("GetAccount")
        _check_account_id(account_id)
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        try:
            account = await self._store.get_account(account_id)
            if account is None:
                raise _account_not_found(account_id)
            ws = self._view()
            await self._store.snapshot(ws, account_id=account_id)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        # The assets it holds, and those of its schedules (one anchored ahead has
        # no balance until catch_up issues its first period).
        assets = {asset for _, asset in ws.balances}
        assets |= {s.asset for s in ws.schedules.values() if s.account_id == account_id}
        balances = []
        for asset in sorted(assets):
            rules.catch_up(ws, account_id, asset)
            if (account_id, asset) in ws.balances:
                balances.append(ws.balance(account_id, asset).copy())
        return dataclasses.replace(account, balances=balances)

    async def get_balance(
        self,
        account_id: str,
        asset: str,
        expiring_within_s: float | None,
        include_lots: bool,
        access: Access = LOCAL,
        as_of_time: datetime | None = None,
        as_of_position: str = "",
    ) -> BalanceView:
        """The balance now, or as of an instant or a stream position (asof.balance_as_of).
        Errors: PermissionDenied, InvalidArgument, AccountNotFound, DatabaseUnavailable."""
        access.require("GetBalance")
        if as_of_time is not None or as_of_position:
            return await self._balance_as_of(
                account_id,
                asset,
                expiring_within_s,
                include_lots,
                access,
                as_of_time,
                as_of_position,
            )
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.asset("asset", asset)
        if (
            expiring_within_s is not None
            and not 0 <= expiring_within_s <= limits.EXPIRING_WITHIN_MAX_S
        ):
            v.add(
                "expiring_within",
                f"must be between 0 and {limits.EXPIRING_WITHIN_MAX_S // 86400} days"
                " (EXPIRING_WITHIN_MAX_S)",
            )
        v.raise_if_any()
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        pair = (account_id, asset)
        ws = self._view()
        try:
            await self._store.snapshot(ws, pairs={pair}, whole_pairs={pair})
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if account_id not in ws.accounts:
            raise _account_not_found(account_id)
        caps = rules.cap_views(ws, account_id, asset)  # catches the pair (and its pools) up
        source = rules.funder(ws, account_id, asset)
        balance = ws.balance(account_id, asset).copy()
        may_spend = rules.chain_spendable(ws, account_id, asset)  # own lots, then the pools
        if caps:
            may_spend = min(may_spend, *(cap.remaining for cap in caps))
        live = ws.spendable_lots(pair)
        now = ws.now
        expiring = 0
        if expiring_within_s is not None:
            horizon = now + timedelta(seconds=expiring_within_s)
            expiring = sum(
                lot.remaining
                for lot in live
                if lot.expires_at is not None and lot.expires_at <= horizon
            )
        return BalanceView(
            balance,
            expiring,
            live[: limits.LOTS_LISTED_MAX] if include_lots else [],
            funded_by=source,
            may_spend=may_spend,
            caps=caps,
        )

    async def _balance_as_of(
        self,
        account_id: str,
        asset: str,
        expiring_within_s: float | None,
        include_lots: bool,
        access: Access,
        at: datetime | None,
        position_text: str,
    ) -> BalanceView:
        """Errors: InvalidArgument, AccountNotFound, DatabaseUnavailable, Contention."""
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.asset("asset", asset)
        if at is not None and position_text:
            v.add("as_of_position", "must not be set together with as_of_time")
        # Named by the as_of field: the lots of a past instant are not kept.
        as_of_field = "as_of_time" if at is not None else "as_of_position"
        if expiring_within_s is not None:
            v.add(as_of_field, "is not available with expiring_within")
        if include_lots:
            v.add(as_of_field, "is not available with include_lots")
        now = self._clock.now()
        if at is not None and at > now:
            v.add("as_of_time", "must not be in the future")
        v.raise_if_any()
        position = decode_position(position_text, "as_of_position") if position_text else None
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        try:
            balance = await asof.balance_as_of(
                self._store, account_id, asset, position, at, self._refund_grace
            )
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if balance is None:
            raise _account_not_found(account_id)
        return BalanceView(balance, 0, [])

    async def get_statement(
        self,
        account_id: str,
        asset: str,
        start: datetime | None,
        end: datetime | None,
        page_size: int,
        page_token: str,
        access: Access = LOCAL,
    ) -> statements.Statement:
        """One account x asset over (start, end] (ledger.service.statement).
        Errors: PermissionDenied, InvalidArgument, AccountNotFound,
        DatabaseUnavailable, Contention, WriterUnavailable."""
        access.require("GetStatement")
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.asset("asset", asset)
        now = self._clock.now()
        if start is None:
            v.add("from_time", "is required")
        if end is None:
            v.add("to_time", "is required")
        elif end > now:
            v.add("to_time", "must not be in the future")
        elif start is not None and end <= start:
            v.add("from_time", "must be before to_time")
            v.add("to_time", "must be after from_time")
        if not 0 <= page_size <= limits.PAGE_SIZE_MAX:
            v.add(
                "page_size",
                f"must be between 0 and {limits.PAGE_SIZE_MAX} (PAGE_SIZE_MAX); 0 means 100",
            )
        v.raise_if_any()
        if start is None or end is None:
            raise errors.InvariantViolation("statement bounds checked above")
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        query = (account_id, asset, start.isoformat(), end.isoformat())
        raw = pagetoken.decode(page_token, "GetStatement", query, 2, "page_token")
        after = None
        if raw is not None:
            if not all(isinstance(p, int) for p in raw):
                raise _invalid("page_token", "is not a next_page_token returned by GetStatement")
            after = statements.cursor_from((int(raw[0]), int(raw[1])))
        try:
            found = await statements.statement(
                self._store,
                self._writer,
                account_id,
                asset,
                start,
                end,
                after,
                page_size or limits.PAGE_SIZE_DEFAULT,
                self._refund_grace,
            )
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if found is None:
            raise _account_not_found(account_id)
        if found.next_cursor is not None:
            found.next_token = pagetoken.encode(
                "GetStatement", query, statements.cursor_parts(found.next_cursor)
            )
        return found

    async def set_alert(
        self,
        account_id: str,
        asset: str,
        threshold: int,
        recovery: int,
        percent: bool,
        access: Access = LOCAL,
        top_up_target: int = 0,
        top_up_monthly_cap: int = 0,
    ) -> BalanceAlert:
        """Create or replace the pair's low-balance alert (docs/design.md, "Balance
        alerts"), with its top-up rule ("Top-up requests"; target 0: none).
        recovery 0 means the threshold. Errors: PermissionDenied,
        InvalidArgument, AccountNotFound, AlertLimitExceeded, DatabaseUnavailable,
        Contention."""
        access.require("SetBalanceAlert")
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.asset("asset", asset)
        top = 100 if percent else limits.AMOUNT_MAX
        unit = "percent" if percent else "AMOUNT_MAX"
        if not 0 <= threshold <= top:
            v.add("threshold", f"must be between 0 and {top} ({unit})")
        if recovery and not 0 <= recovery <= top:
            v.add("recovery", f"must be between threshold and {top} ({unit}); 0 means threshold")
        elif recovery and recovery < threshold:
            # Which of the two is wrong is the caller's to say: both are named.
            v.add("threshold", "must not be above recovery")
            v.add("recovery", "must not be below threshold")
        if not 0 <= top_up_target <= limits.AMOUNT_MAX:
            v.add("top_up_target", f"must be between 0 and {limits.AMOUNT_MAX} (AMOUNT_MAX)")
        if not 0 <= top_up_monthly_cap <= limits.AMOUNT_MAX:
            v.add("top_up_monthly_cap", f"must be between 0 and {limits.AMOUNT_MAX} (AMOUNT_MAX)")
        elif top_up_monthly_cap and not top_up_target:
            v.add("top_up_monthly_cap", "needs top_up_target (no top-up rule without a target)")
        v.raise_if_any()
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        try:
            alert = await self._store.set_alert(
                account_id,
                asset,
                threshold,
                recovery or threshold,
                percent,
                self._clock.now(),
                (top_up_target, top_up_monthly_cap),
            )
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if alert is None:
            raise _account_not_found(account_id)
        return _this_month(alert, self._clock.now())

    async def list_alerts(self, account_id: str, access: Access = LOCAL) -> list[BalanceAlert]:
        """Errors: PermissionDenied, InvalidArgument, AccountNotFound, DatabaseUnavailable."""
        access.require("ListBalanceAlerts")
        _check_account_id(account_id)
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        try:
            found = await self._store.list_alerts(account_id)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if found is None:
            raise _account_not_found(account_id)
        now = self._clock.now()
        return [_this_month(a, now) for a in found]

    async def delete_alert(self, account_id: str, asset: str, access: Access = LOCAL) -> bool:
        """Errors: PermissionDenied, InvalidArgument, AccountNotFound (outside the
        scope), DatabaseUnavailable, Contention."""
        access.require("DeleteBalanceAlert")
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.asset("asset", asset)
        v.raise_if_any()
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        try:
            return await self._store.delete_alert(account_id, asset)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc

    async def get_reservation(self, reservation_id: str, access: Access = LOCAL) -> Reservation:
        """Errors: PermissionDenied, InvalidArgument, ReservationNotFound (also when
        its account is outside the caller's scope), DatabaseUnavailable."""
        access.require("GetReservation")
        v = c.Violations()
        v.reservation_id("reservation_id", reservation_id)
        v.raise_if_any()
        ws = self._view()
        try:
            await self._store.snapshot(ws, reservation_ids={reservation_id})
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        res = ws.reservations.get(reservation_id)
        if res is None or not access.covers(res.spender):
            raise errors.ReservationNotFound(f"reservation {reservation_id} not found")
        rules.catch_up(ws, res.account_id, res.asset)
        out = rules.snapshot(res)
        if groups.needs_group_metadata(out):
            out.metadata = await self._group_metadata(out.group_id)
        return out

    async def get_grant_schedule(self, schedule_id: str, access: Access = LOCAL) -> Schedule:
        """The schedule as it is now: rules.catch_up has issued its due periods.
        Errors: PermissionDenied, InvalidArgument, ScheduleNotFound (also when its
        account is outside the caller's scope), DatabaseUnavailable."""
        access.require("GetGrantSchedule")
        if not c.is_uuid(schedule_id):
            raise _invalid(
                "schedule_id", "must be a schedule id returned by CreateGrantSchedule (a UUID)"
            )
        ws = self._view()
        try:
            await self._store.snapshot(ws, schedule_ids={schedule_id})
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        found = ws.schedules.get(schedule_id)
        s = schedules.require_in_scope(
            found, schedule_id, found is not None and access.covers(found.account_id)
        )
        rules.catch_up(ws, s.account_id, s.asset)
        return schedules.snapshot(s)

    async def get_breakage(
        self,
        account_id: str,
        asset: str,
        start: datetime | None,
        end: datetime | None,
        access: Access = LOCAL,
    ) -> list[BreakageLine]:
        """Credits written off at their lots' expiry in [start, end) (default: all
        time up to now), by category and cost basis, including write-offs due and
        not yet written down (rules.catch_up). Errors: PermissionDenied,
        InvalidArgument, AccountNotFound, DatabaseUnavailable."""
        access.require("GetBreakage")
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.asset("asset", asset)
        if start is not None and end is not None and end <= start:
            v.add("end", "must be after start")
        v.raise_if_any()
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        ws = self._view()
        lo = start or _EPOCH
        hi = end or ws.now + timedelta(microseconds=1)
        try:
            written = await self._store.breakage(ws, (account_id, asset), lo, hi)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if written is None:
            raise _account_not_found(account_id)
        rules.catch_up(ws, account_id, asset)
        return schedules.breakage(ws, written, lo, hi)

    async def list_grant_schedules(
        self, account_id: str, page_size: int, page_token: str, access: Access = LOCAL
    ) -> tuple[list[Schedule], str]:
        """An account's grant schedules, oldest first, each as it is now (its due
        periods counted in next_period). Errors: PermissionDenied, InvalidArgument,
        AccountNotFound, DatabaseUnavailable."""
        access.require("ListGrantSchedules")
        v = c.Violations()
        v.account_id("account_id", account_id)
        if not 0 <= page_size <= limits.PAGE_SIZE_MAX:
            v.add("page_size", f"must be between 0 and {limits.PAGE_SIZE_MAX} (PAGE_SIZE_MAX)")
        v.raise_if_any()
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        cursor = pagetoken.decode(page_token, "ListGrantSchedules", (account_id,), 2)
        after = None
        if cursor is not None:
            micros, last_id = cursor
            if (
                not isinstance(micros, int)
                or not isinstance(last_id, str)
                or not c.is_uuid(last_id)
            ):
                raise _invalid("page_token", "is not a token this server made for this query")
            after = (_EPOCH + timedelta(microseconds=micros), last_id)
        size = page_size or limits.PAGE_SIZE_DEFAULT
        try:
            found = await self._store.list_schedules(account_id, after, size + 1)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if found is None:
            raise _account_not_found(account_id)
        page = found[:size]
        token = ""
        if len(found) > size:
            last = page[-1]
            token = pagetoken.encode(
                "ListGrantSchedules",
                (account_id,),
                ((last.created_at - _EPOCH) // timedelta(microseconds=1), last.schedule_id),
            )
        now = self._clock.now()
        return [schedules.as_of(s, now) for s in page], token

    async def get_group(self, group_id: str, access: Access = LOCAL) -> GroupResult:
        """Errors: PermissionDenied, InvalidArgument, ReservationGroupNotFound (also
        when any leg's account is outside the caller's scope), DatabaseUnavailable."""
        access.require("GetReservationGroup")
        if not c.is_uuid(group_id):
            raise _invalid("group_id", "must be a group id returned by ReserveGroup (a UUID)")
        ws = self._view()
        try:
            await self._store.snapshot(ws, group_id=group_id)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        legs = [r for r in ws.reservations.values() if r.group_id == group_id]
        if not legs or not all(access.covers(r.spender) for r in legs):
            raise errors.ReservationGroupNotFound(f"reservation group {group_id} not found")
        for r in legs:
            rules.catch_up(ws, r.account_id, r.asset)
        # As requested (leg_index); groups made before it was stored: by leg key.
        legs.sort(key=lambda r: (r.leg_index, r.created_at, r.leg_key))
        return groups.with_group_metadata(GroupResult(group_id, [rules.snapshot(r) for r in legs]))

    async def list_entries(
        self, account_id: str, asset: str, page_size: int, page_token: str, access: Access = LOCAL
    ) -> EntriesPage:
        """Newest first. Errors: PermissionDenied, InvalidArgument, AccountNotFound,
        DatabaseUnavailable."""
        access.require("ListEntries")
        v = c.Violations()
        v.account_id("account_id", account_id)
        if asset:
            v.asset("asset", asset)
        if not 0 <= page_size <= limits.PAGE_SIZE_MAX:
            v.add(
                "page_size",
                f"must be between 0 and {limits.PAGE_SIZE_MAX} (PAGE_SIZE_MAX); 0 means 100",
            )
        v.raise_if_any()
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        before = _decode_page_token(page_token, account_id, asset)
        size = page_size or limits.PAGE_SIZE_DEFAULT
        try:
            entries = await self._store.list_entries(account_id, asset, before, size + 1)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        if entries is None:
            raise _account_not_found(account_id)
        token = ""
        if len(entries) > size:
            entries = entries[:size]
            token = _encode_page_token(entries[-1].entry_id, account_id, asset)
        return EntriesPage(entries, token)

    async def list_reservations(
        self, query: ReservationQuery, page_size: int, page_token: str, access: Access = LOCAL
    ) -> ReservationsPage:
        """Oldest first, each as GetReservation shows it (an overdue hold EXPIRED, seen
        through rules.catch_up). Errors: PermissionDenied, InvalidArgument,
        AccountNotFound, DatabaseUnavailable, Contention."""
        access.require("ListReservations")
        query.validate(page_size)
        if not access.covers(query.account_id):
            raise _account_not_found(query.account_id)
        after = query.decode_token(page_token)
        size = page_size or limits.PAGE_SIZE_DEFAULT
        ws = self._view()
        try:
            found = await self._store.list_reservations(
                query.account_id, query.asset, query.state, after, size + 1, ws.now
            )
            if found is None:
                raise _account_not_found(query.account_id)
            page = found[:size]
            overdue = {r.reservation_id for r in page if r.overdue(ws.now)}
            if overdue:
                await self._store.snapshot(ws, reservation_ids=overdue)
                for pair in {(r.account_id, r.asset) for r in page if r.reservation_id in overdue}:
                    rules.catch_up(ws, *pair)
        except _STORAGE_FAILURES as exc:
            raise _storage_failure(exc) from exc
        token = query.encode_token(found[size - 1]) if len(found) > size else ""
        shown = [rules.snapshot(ws.reservations.get(r.reservation_id, r)) for r in page]
        return ReservationsPage(shown, token)


def _merge(
    admitted: list[c.BatchCommand | errors.LedgerError],
    ran: tuple[tuple[GrantResult | ReservationResult | errors.LedgerError, bool], ...],
    cmds: tuple[c.BatchCommand, ...],
) -> tuple[tuple[GrantResult | ReservationResult | errors.LedgerError, bool], ...]:
    """Every command's outcome in request order: refusals where admission
    refused, the writer's outcomes (in order) for the others; counted as the
    single calls count theirs."""
    outcomes = iter(ran)
    merged: list[tuple[GrantResult | ReservationResult | errors.LedgerError, bool]] = []
    for cmd, a in zip(cmds, admitted, strict=True):
        if isinstance(a, errors.LedgerError):
            merged.append((a, False))
            continue
        outcome, replayed = next(outcomes)
        if replayed:
            metrics.REPLAYS.labels(cmd.method).inc()
        if isinstance(outcome, errors.LedgerError):
            metrics.REJECTIONS.labels(cmd.method, outcome.reason).inc()
        merged.append((outcome, replayed))
    return tuple(merged)


def _check_account_id(account_id: str) -> None:
    v = c.Violations()
    v.account_id("account_id", account_id)
    v.raise_if_any()


def _account_not_found(account_id: str) -> errors.AccountNotFound:
    return errors.AccountNotFound(f"account {account_id} not found", {"account_id": account_id})


def _encode_page_token(before_entry_id: int, account_id: str, asset: str) -> str:
    return pagetoken.encode("ListEntries", (account_id, asset), (before_entry_id,))


def _decode_page_token(token: str, account_id: str, asset: str) -> int | None:
    """A page token is bound to the query it came from (AIP-158); see ledger.service.pagetoken."""
    cursor = pagetoken.decode(token, "ListEntries", (account_id, asset), 1, "page_token")
    if cursor is None:
        return None
    before = cursor[0]
    if not isinstance(before, int) or before <= 0:
        raise _invalid("page_token", "is not a next_page_token returned by ListEntries")
    return before


def _this_month(alert: BalanceAlert, now: datetime) -> BalanceAlert:
    """The alert as a reader sees it now: what was requested in an earlier month
    does not count in this one (the writer resets the total at the next request)."""
    month = now.astimezone(UTC).date().replace(day=1)
    if alert.top_up_month is not None and alert.top_up_month != month:
        alert.top_up_requested_month = 0
    return alert
