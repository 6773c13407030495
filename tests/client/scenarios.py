"""Runs inside a fresh virtual environment that has only the creditledger-client wheel.

Not a pytest module: tests/client/test_wheel.py starts it with that venv's
python. It imports nothing but the standard library and the installed client,
checks every expectation itself (an AssertionError fails the run), and prints
one JSON line per finished scenario for the test to read. Between the
scenarios and the restart check it waits for the test to arm its proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import creditledger_client as cl
from creditledger_client import (
    GroupLeg,
    LedgerClient,
    LedgerError,
    ReservationState,
    RetryPolicy,
    SyncLedgerClient,
)

E = TypeVar("E", bound=LedgerError)


def report(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def expect(error: type[E], call: Awaitable[Any]) -> E:
    try:
        await call
    except error as e:
        return e
    raise AssertionError(f"expected {error.__name__}")


def check_isolation() -> None:
    """The wheel alone: no server package, no asyncpg, no pgserver in this interpreter."""
    for name in ("ledger", "asyncpg", "pgserver"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable in the client venv"
    assert sys.prefix != sys.base_prefix, "not running in a virtual environment"
    assert (cl.__file__ or "").startswith(sys.prefix), cl.__file__
    report("isolation", client_file=cl.__file__, prefix=sys.prefix)


async def email_scenario(c: LedgerClient) -> None:
    """Grant 30; 31 opens charge 1 each: 30 succeed, the 31st is a clean no."""
    account = new_id("email")
    await c.create_account(account, {"product": "email"})
    grant = await c.grant(account, "image_opens", 30, source="purchase")
    assert grant.balance.available == 30 and not grant.replayed
    charged = 0
    refusal: cl.InsufficientCredits | None = None
    for _ in range(31):
        try:
            result = await c.charge(account, "image_opens", 1)
            assert result.reservation.state is ReservationState.CLOSED
            charged += 1
        except cl.InsufficientCredits as e:
            refusal = e
    assert charged == 30 and refusal is not None
    assert (refusal.available, refusal.requested) == (0, 1)
    assert (refusal.account_id, refusal.asset) == (account, "image_opens")
    balance = (await c.get_balance(account, "image_opens")).balance
    assert (balance.available, balance.settled, balance.reserved) == (0, 30, 0), balance
    report("email", charged=charged, available=balance.available)


async def crm_scenario(c: LedgerClient, sync: SyncLedgerClient) -> None:
    """The CRM automation: hold all up front or nothing, settle delivered, refund failures."""

    async def run_charged(grant: int) -> str:
        # An automation run over 3,000 customers charges 3,000 credits.
        account = new_id("crm")
        await c.create_account(account)
        await c.grant(account, "crm_credits", grant)
        await c.grant(account, "sms_credits", 50)  # a separate balance of the same customer
        await c.charge(account, "crm_credits", 3_000, metadata={"run": "r1"})
        return account

    async def available(account: str) -> int:
        return (await c.get_balance(account, "crm_credits")).balance.available

    # Its 3,000 emails are held and all delivered: 6,000 deducted.
    all_sent = await run_charged(10_000)
    async with c.reservation(all_sent, "crm_credits", 3_000) as hold:
        hold.use(3_000)
    assert hold.result is not None and hold.result.reservation.settled == 3_000
    assert await available(all_sent) == 4_000

    # 1,000 deliveries fail, settled as 2,000 final: the helper releases the rest.
    settled_less = await run_charged(10_000)
    async with c.reservation(settled_less, "crm_credits", 3_000) as hold:
        hold.use(1_500)
        hold.use(500)
    assert hold.result is not None
    assert (hold.result.reservation.settled, hold.result.reservation.released) == (2_000, 1_000)
    assert await available(settled_less) == 5_000

    # ... or as Settle 3,000, then Refund 1,000 in steps as failures are confirmed (blocking client).
    refunded_later = await run_charged(10_000)
    rid = sync.reserve(refunded_later, "crm_credits", 3_000).reservation.reservation_id
    sync.settle(rid, 3_000, final=True)
    for part in (400, 300, 300):
        refunded = sync.refund(rid, part, reason="delivery failed")
    assert refunded.reservation.refunded == 1_000 and refunded.balance.available == 5_000

    # An exception inside the block settles what was used (delivered work is paid
    # for) and releases the rest; on_error="release" gives the whole hold back.
    try:
        with sync.reservation(refunded_later, "crm_credits", 500) as sync_hold:
            sync_hold.use(100)
            raise RuntimeError("the send failed")
    except RuntimeError:
        pass
    assert sync_hold.result is not None
    assert (sync_hold.result.reservation.settled, sync_hold.result.reservation.released) == (
        100,
        400,
    )
    try:
        with sync.reservation(refunded_later, "crm_credits", 500, on_error="release") as sync_hold:
            sync_hold.use(100)
            raise RuntimeError("all or nothing")
    except RuntimeError:
        pass
    assert sync_hold.result is not None and sync_hold.result.reservation.released == 500

    # With 2,000 granted a run of 3,000 holds nothing and deducts nothing.
    poor = new_id("crm")
    await c.create_account(poor)
    await c.grant(poor, "crm_credits", 2_000)
    refusal = await expect(cl.InsufficientCredits, c.reserve(poor, "crm_credits", 3_000))
    assert (refusal.available, refusal.requested) == (2_000, 3_000)
    assert await available(poor) == 2_000

    view = await c.get_account(refunded_later)
    balances = {b.asset: b.available for b in view.balances}
    assert balances == {"crm_credits": 4_900, "sms_credits": 50}, balances
    entries = [e async for e in c.iter_entries(refunded_later, asset="crm_credits", page_size=7)]
    assert sum(e.amount for e in entries if e.bucket is cl.Bucket.AVAILABLE) == 4_900
    report("crm", left=[4_000, 5_000, 4_900, 2_000], entries=len(entries))


async def typed_exceptions(c: LedgerClient, target: str) -> list[str]:
    """Each reason the server gives, caught as its own exception class."""
    seen: list[str] = []
    account = new_id("errors")
    await c.create_account(account)
    await c.grant(account, "crm_credits", 100)

    bad = await expect(cl.InvalidArgument, c.grant(account, "Not An Asset", 0))
    assert {v.field for v in bad.field_violations} >= {"asset", "amount"}, bad.field_violations
    assert bad.reason == "INVALID_ARGUMENT" and bad.status is not None
    seen.append(type(bad).__name__)

    missing = new_id("nobody")
    for error, call in [
        (cl.AccountNotFound, c.grant(missing, "crm_credits", 1)),
        (cl.ReservationNotFound, c.get_reservation(str(uuid.uuid4()))),
        (cl.ReservationGroupNotFound, c.get_reservation_group(str(uuid.uuid4()))),
        (cl.AccountExists, c.create_account(account)),
    ]:
        e = await expect(error, call)
        assert isinstance(e, cl.NotFound | cl.AlreadyExists) and not e.retryable
        seen.append(type(e).__name__)
    assert (await c.create_account(account, exist_ok=True)).account_id == account

    key = uuid.uuid4().hex
    first = await c.charge(account, "crm_credits", 5, idempotency_key=key)
    again = await c.charge(account, "crm_credits", 5, idempotency_key=key)
    assert not first.replayed and again.replayed
    assert again.reservation.reservation_id == first.reservation.reservation_id
    reused = await expect(
        cl.IdempotencyKeyReused, c.charge(account, "crm_credits", 6, idempotency_key=key)
    )
    seen.append(type(reused).__name__)

    closed = await expect(cl.ReservationClosed, c.settle(first.reservation.reservation_id, 1))
    seen.append(type(closed).__name__)

    held = await c.reserve(account, "crm_credits", 10)
    rid = held.reservation.reservation_id
    over = await expect(cl.AmountExceedsRemaining, c.settle(rid, 11))
    assert (over.remaining, over.requested) == (10, 11)
    seen.append(type(over).__name__)
    await c.settle(rid, 4, final=True)
    too_much = await expect(cl.AmountExceedsSettled, c.refund(rid, 5))
    assert (too_much.refundable, too_much.requested) == (4, 5)
    seen.append(type(too_much).__name__)

    legs = [GroupLeg(account, "crm_credits", 1, "a"), GroupLeg(account, "crm_credits", 10**6, "b")]
    short = await expect(cl.InsufficientCredits, c.reserve_group(legs))
    assert short.leg_key == "b", short.metadata
    seen.append(type(short).__name__)
    group = await c.reserve_group(legs[:1])
    assert [r.leg_key for r in group.group.reservations] == ["a"]
    assert (await c.get_reservation_group(group.group.group_id)).group_id == group.group.group_id

    short_lived = await c.reserve(account, "crm_credits", 3, ttl=timedelta(seconds=1))
    expired_id = short_lived.reservation.reservation_id
    deadline = time.monotonic() + 15
    while (await c.get_reservation(expired_id)).state is not ReservationState.EXPIRED:
        assert time.monotonic() < deadline, "reservation did not expire within 15 s"
        await asyncio.sleep(0.2)  # waiting on the clock itself: there is no event to await
    expired = await expect(cl.ReservationExpired, c.settle(expired_id, 1))
    seen.append(type(expired).__name__)

    # Nothing listens on the client's own closed port: UNAVAILABLE after bounded retries.
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    async with LedgerClient(target, retry=retry, total_timeout_s=5) as dead:
        down = await expect(cl.Unavailable, dead.get_account(account))
    assert down.retryable and down.reason == ""
    assert any("after 3 attempts" in note for note in getattr(down, "__notes__", []))
    seen.append(type(down).__name__)
    report("exceptions", seen=seen)
    return seen


async def restart_retry(proxy_target: str) -> None:
    """One charge whose reply is lost to a server kill; the client's own retry replays it."""
    account = new_id("restart")
    async with LedgerClient(proxy_target) as setup:
        await setup.create_account(account)
        await setup.grant(account, "crm_credits", 100)
    report("ready-for-restart", account=account)
    assert sys.stdin.readline().strip() == "armed"
    retry = RetryPolicy(max_attempts=80, initial_backoff_s=0.05, max_backoff_s=0.5)
    async with LedgerClient(proxy_target, retry=retry, total_timeout_s=50) as c:
        result = await c.charge(account, "crm_credits", 7)  # the key is made once, kept
        balance = (await c.get_balance(account, "crm_credits")).balance
        settles = [
            e
            async for e in c.iter_entries(account)
            if e.movement is cl.Movement.SETTLE and e.bucket is not cl.Bucket.SYSTEM
        ]
    assert result.replayed, "the retry after the restart should replay the committed charge"
    assert (balance.available, balance.settled) == (93, 7), balance
    assert sum(e.amount for e in settles) == -7, settles  # one charge in the journal
    report("restart", replayed=result.replayed, available=balance.available, account=account)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--dead", required=True, help="an address where nothing listens")
    args = parser.parse_args()
    check_isolation()
    async with LedgerClient(args.target) as c:
        with SyncLedgerClient(args.target) as sync:
            await email_scenario(c)
            await crm_scenario(c, sync)
            await typed_exceptions(c, args.dead)
    await restart_retry(args.proxy)
    report("done")


if __name__ == "__main__":
    asyncio.run(main())
