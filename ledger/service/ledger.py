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

import base64
import binascii
import dataclasses
import json
from datetime import timedelta

from ledger.domain import commands as c
from ledger.domain import errors, limits
from ledger.domain.access import LOCAL, Access
from ledger.domain.errors import FieldViolation
from ledger.domain.model import (
    Account,
    BalanceView,
    EntriesPage,
    GroupResult,
    Reservation,
    ReservationState,
    Result,
)
from ledger.observability import metrics
from ledger.service.clock import Clock
from ledger.service.ports import CommandSink, StorageUnavailable, Store


def _invalid(field: str, description: str) -> errors.InvalidArgument:
    return errors.InvalidArgument([FieldViolation(field, description)])


def _unavailable(exc: StorageUnavailable) -> errors.DatabaseUnavailable:
    return errors.DatabaseUnavailable(
        "the database is unavailable; retry shortly", {"cause": str(exc)}
    )


def present(res: Reservation, clock: Clock) -> Reservation:
    """An overdue open reservation reads as expired, its remaining released."""
    if res.overdue(clock.now()):
        return dataclasses.replace(
            res, state=ReservationState.EXPIRED, released=res.released + res.remaining
        )
    return res


class Ledger:
    def __init__(self, store: Store, writer: CommandSink, clock: Clock) -> None:
        # `writer`: the local Writer, or the Election that routes to the elected one.
        self._store = store
        self._writer = writer
        self._clock = clock

    async def execute(self, cmd: c.MutatingCommand, access: Access = LOCAL) -> tuple[Result, bool]:
        """Run a mutating command as `access.caller`. Returns (result, replayed).

        Errors: PermissionDenied; InvalidArgument; the business errors of the
        command (see ledger.domain.rules), with AccountNotFound or
        ReservationNotFound also for what lies outside the caller's scope;
        IdempotencyKeyReused; DatabaseUnavailable; WriterUnavailable; Contention.
        """
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
                raise _invalid("expires_at", "must be within 100 years (GRANT_EXPIRY_MAX_S)")
        try:
            result, replayed = await self._writer.submit(cmd)
        except errors.LedgerError as exc:
            if exc.kind is not errors.Kind.UNAVAILABLE and exc.kind is not errors.Kind.ABORTED:
                metrics.REJECTIONS.labels(cmd.method, exc.reason).inc()
            if exc.replayed:
                metrics.REPLAYS.labels(cmd.method).inc()
            raise
        if replayed:
            metrics.REPLAYS.labels(cmd.method).inc()
        return result, replayed

    async def create_account(
        self, account_id: str, metadata: dict[str, str], access: Access = LOCAL
    ) -> Account:
        """Errors: PermissionDenied (also for an id outside the caller's prefixes:
        that answer depends on the id alone, never on what exists), InvalidArgument,
        AccountExists, DatabaseUnavailable."""
        access.require("CreateAccount")
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.metadata("metadata", metadata)
        v.raise_if_any()
        if not access.covers(account_id):
            raise errors.PermissionDenied(
                f"caller {access.caller} may only create accounts whose id starts with one of"
                " its account prefixes",
                {"method": "CreateAccount"},
            )
        try:
            account = await self._store.create_account(account_id, metadata, self._clock.now())
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
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
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        if account is None:
            raise _account_not_found(account_id)
        return account

    async def get_balance(
        self,
        account_id: str,
        asset: str,
        expiring_within_s: float | None,
        include_lots: bool,
        access: Access = LOCAL,
    ) -> BalanceView:
        """Errors: PermissionDenied, InvalidArgument, AccountNotFound, DatabaseUnavailable."""
        access.require("GetBalance")
        v = c.Violations()
        v.account_id("account_id", account_id)
        v.asset("asset", asset)
        if (
            expiring_within_s is not None
            and not 0 <= expiring_within_s <= limits.EXPIRING_WITHIN_MAX_S
        ):
            v.add("expiring_within", "must be between 0 and 3660 days (EXPIRING_WITHIN_MAX_S)")
        v.raise_if_any()
        if not access.covers(account_id):
            raise _account_not_found(account_id)
        try:
            found = await self._store.get_balance(account_id, asset)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        if found is None:
            raise _account_not_found(account_id)
        balance, lots = found
        now = self._clock.now()
        due = sum(lot.remaining for lot in lots if lot.expired_at(now))
        if due:
            # The sweeper has not written these off yet; they are not available any more.
            balance = dataclasses.replace(
                balance, available=balance.available - due, expired=balance.expired + due
            )
        live = sorted(
            (lot for lot in lots if not lot.expired_at(now)), key=lambda lot: lot.spend_order()
        )
        expiring = 0
        if expiring_within_s is not None:
            horizon = now + timedelta(seconds=expiring_within_s)
            expiring = sum(
                lot.remaining
                for lot in live
                if lot.expires_at is not None and lot.expires_at <= horizon
            )
        return BalanceView(
            balance, expiring, live[: limits.LOTS_LISTED_MAX] if include_lots else []
        )

    async def get_reservation(self, reservation_id: str, access: Access = LOCAL) -> Reservation:
        """Errors: PermissionDenied, InvalidArgument, ReservationNotFound (also when
        its account is outside the caller's scope), DatabaseUnavailable."""
        access.require("GetReservation")
        v = c.Violations()
        v.reservation_id("reservation_id", reservation_id)
        v.raise_if_any()
        try:
            res = await self._store.get_reservation(reservation_id)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        if res is None or not access.covers(res.account_id):
            raise errors.ReservationNotFound(f"reservation {reservation_id} not found")
        return present(res, self._clock)

    async def get_group(self, group_id: str, access: Access = LOCAL) -> GroupResult:
        """Errors: PermissionDenied, InvalidArgument, ReservationGroupNotFound (also
        when any leg's account is outside the caller's scope), DatabaseUnavailable."""
        access.require("GetReservationGroup")
        if not c.is_uuid(group_id):
            raise _invalid("group_id", "must be a group id returned by ReserveGroup (a UUID)")
        try:
            legs = await self._store.get_group(group_id)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        if not legs or not all(access.covers(r.account_id) for r in legs):
            raise errors.ReservationGroupNotFound(f"reservation group {group_id} not found")
        legs.sort(key=lambda r: (r.created_at, r.leg_key))
        return GroupResult(group_id, [present(r, self._clock) for r in legs])

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
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        if entries is None:
            raise _account_not_found(account_id)
        token = ""
        if len(entries) > size:
            entries = entries[:size]
            token = _encode_page_token(entries[-1].entry_id, account_id, asset)
        return EntriesPage(entries, token)


def _check_account_id(account_id: str) -> None:
    v = c.Violations()
    v.account_id("account_id", account_id)
    v.raise_if_any()


def _account_not_found(account_id: str) -> errors.AccountNotFound:
    return errors.AccountNotFound(f"account {account_id} not found", {"account_id": account_id})


def _encode_page_token(before_entry_id: int, account_id: str, asset: str) -> str:
    raw = json.dumps({"b": before_entry_id, "a": account_id, "s": asset}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_page_token(token: str, account_id: str, asset: str) -> int | None:
    """A page token is bound to the query it came from (AIP-158)."""
    if not token:
        return None
    bad = _invalid(
        "page_token", "is not a token returned by ListEntries for this account_id and asset"
    )
    if len(token) > limits.PAGE_TOKEN_LEN_MAX:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise bad from exc
    if not isinstance(data, dict) or data.get("a") != account_id or data.get("s") != asset:
        raise bad
    before = data.get("b")
    if not isinstance(before, int) or isinstance(before, bool) or before <= 0:
        raise bad
    return before
