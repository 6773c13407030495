"""The client's retry policy on the wire: which codes, which key, how long, and the helper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from creditledger_client import (
    FailedPrecondition,
    InvalidArgument,
    LedgerClient,
    NotFound,
    RetryPolicy,
    SyncLedgerClient,
    Unavailable,
)

from tests.client.scripted import Failure, ScriptedServer

FAST = RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.005)
U = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    yield server
    await server.stop()


def keys(server: ScriptedServer, method: str) -> list[str]:
    return [request.idempotency_key for request, _ in server.scripts[method].calls]


@pytest.mark.parametrize(
    "code",
    [U, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
async def test_retryable_codes_are_retried_with_the_same_key(
    scripted: ScriptedServer, code: grpc.StatusCode
) -> None:
    scripted.scripts["Charge"].failures = [Failure(code), Failure(code)]
    scripted.scripts["Charge"].replayed = True
    async with LedgerClient(scripted.target, retry=FAST) as client:
        result = await client.charge("acct", "crm_credits", 3)
    sent = keys(scripted, "Charge")
    assert len(sent) == 3 and len(set(sent)) == 1 and sent[0], sent
    assert result.replayed is True


async def test_deadline_exceeded_is_retried(scripted: ScriptedServer) -> None:
    scripted.scripts["Charge"].failures = [Failure(grpc.StatusCode.OK, stall_s=1.0)]
    async with LedgerClient(scripted.target, retry=FAST, timeout_s=0.2) as client:
        result = await client.charge("acct", "crm_credits", 1, idempotency_key="mine")
    assert keys(scripted, "Charge") == ["mine", "mine"]
    assert result.replayed is False


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
    ],
)
async def test_refusals_are_never_retried(
    scripted: ScriptedServer, code: grpc.StatusCode, error: type[Exception]
) -> None:
    scripted.scripts["Charge"].failures = [Failure(code)]
    async with LedgerClient(scripted.target, retry=FAST) as client:
        with pytest.raises(error):
            await client.charge("acct", "crm_credits", 1)
    assert len(scripted.scripts["Charge"].calls) == 1


async def test_attempts_are_bounded(scripted: ScriptedServer) -> None:
    scripted.scripts["GetAccount"].failures = [Failure(U)] * 50
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002)
    async with LedgerClient(scripted.target, retry=policy) as client:
        with pytest.raises(Unavailable) as caught:
            await client.get_account("acct")
    assert len(scripted.scripts["GetAccount"].calls) == 4
    assert caught.value.__notes__ == [
        f"creditledger-client: gave up after 4 attempts; request id {caught.value.request_id}"
    ]
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)  # the raw error stays


async def test_overall_deadline_bounds_retries(scripted: ScriptedServer) -> None:
    scripted.scripts["GetAccount"].failures = [Failure(U)] * 1000
    policy = RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.1)
    started = time.monotonic()
    async with LedgerClient(scripted.target, retry=policy, total_timeout_s=0.6) as client:
        with pytest.raises(Unavailable):
            await client.get_account("acct")
    elapsed = time.monotonic() - started
    attempts = len(scripted.scripts["GetAccount"].calls)
    assert elapsed < 2.0 and 2 <= attempts < 100, (elapsed, attempts)


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    import random

    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    rng = random.Random(7)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        pauses = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert min(pauses) >= 0 and max(pauses) <= cap
        assert max(pauses) > cap * 0.8  # jitter spreads over the whole range


async def test_blocking_client_keeps_the_key_too(scripted: ScriptedServer) -> None:
    scripted.scripts["Charge"].failures = [Failure(U)]

    def charge() -> bool:
        with SyncLedgerClient(scripted.target, retry=FAST) as client:
            return client.charge("acct", "crm_credits", 2).replayed

    # The blocking client runs in a thread: the scripted server lives on this loop.
    assert await asyncio.to_thread(charge) is False
    sent = keys(scripted, "Charge")
    assert len(sent) == 2 and sent[0] == sent[1]


async def test_token_goes_out_as_bearer_metadata(scripted: ScriptedServer) -> None:
    async with LedgerClient(scripted.target, token="s3cret", metadata=[("x-caller", "crm")]) as c:
        await c.get_account("acct")
    ((_, metadata),) = scripted.scripts["GetAccount"].calls
    assert metadata["authorization"] == "Bearer s3cret" and metadata["x-caller"] == "crm"
    assert metadata["user-agent"].startswith("creditledger-client-python/")


async def test_reservation_helper_settles_what_was_used(scripted: ScriptedServer) -> None:
    async with (
        LedgerClient(scripted.target, retry=FAST) as client,
        client.reservation("acct", "crm_credits", 10) as hold,
    ):
        hold.use(4)
        hold.use(2)
        with pytest.raises(ValueError, match="exceeds the hold"):
            hold.use(5)
    ((settle, _),) = scripted.scripts["Settle"].calls
    assert (settle.amount, settle.final) == (6, True)
    assert scripted.scripts["Release"].calls == []


async def test_reservation_helper_settles_what_was_used_on_exception(
    scripted: ScriptedServer,
) -> None:
    async with LedgerClient(scripted.target, retry=FAST) as client:
        with pytest.raises(RuntimeError, match="send failed"):
            async with client.reservation("acct", "crm_credits", 10) as hold:
                hold.use(3)
                raise RuntimeError("send failed")
    ((settle, _),) = scripted.scripts["Settle"].calls
    assert (settle.amount, settle.final) == (3, True)  # delivered work is paid for
    assert settle.idempotency_key == "hold:res-1:settle"  # derived from the reservation
    assert scripted.scripts["Release"].calls == []
    assert hold.result is not None


async def test_reservation_helper_releases_when_asked(scripted: ScriptedServer) -> None:
    async with LedgerClient(scripted.target, retry=FAST) as client:
        with pytest.raises(RuntimeError, match="send failed"):
            async with client.reservation("acct", "crm_credits", 10, on_error="release") as hold:
                hold.use(3)
                raise RuntimeError("send failed")
        with pytest.raises(RuntimeError, match="worthless"):
            async with client.reservation("acct", "crm_credits", 10) as hold:
                hold.use(3)
                hold.on_error = "release"  # decided inside the block
                raise RuntimeError("worthless")
    releases = scripted.scripts["Release"].calls
    assert [(r.amount, r.idempotency_key) for r, _ in releases] == [(0, "hold:res-1:release")] * 2
    assert scripted.scripts["Settle"].calls == []


async def test_reservation_helper_releases_when_nothing_was_used(scripted: ScriptedServer) -> None:
    async with LedgerClient(scripted.target, retry=FAST) as client:
        with pytest.raises(RuntimeError):
            async with client.reservation("acct", "crm_credits", 10):
                raise RuntimeError("failed before any work")
    ((release, _),) = scripted.scripts["Release"].calls
    assert release.amount == 0 and scripted.scripts["Settle"].calls == []


async def test_failed_settle_is_noted_on_the_original_exception(scripted: ScriptedServer) -> None:
    scripted.scripts["Settle"].failures = [Failure(grpc.StatusCode.FAILED_PRECONDITION)]
    async with LedgerClient(scripted.target, retry=FAST) as client:
        with pytest.raises(RuntimeError) as caught:
            async with client.reservation("acct", "crm_credits", 10) as hold:
                hold.use(1)
                raise RuntimeError("send failed")
    assert any("settle of res-1 failed" in note for note in caught.value.__notes__)
