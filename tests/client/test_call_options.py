"""Per call: the deadline that bounds the whole call, RetryInfo, the request id,
per-call metadata and interceptors, on the wire of a scripted server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from creditledger_client import (
    REQUEST_ID_HEADER,
    DeadlineExceeded,
    FailedPrecondition,
    LedgerClient,
    RateLimited,
    RetryPolicy,
    SyncLedgerClient,
    Unavailable,
)
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.client.scripted import Failure, ScriptedServer

U = grpc.StatusCode.UNAVAILABLE
RX = grpc.StatusCode.RESOURCE_EXHAUSTED
FAST = RetryPolicy(max_attempts=1000, initial_backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    yield server
    await server.stop()


def rate_limited(delay_ms: int, request_id: str = "") -> tuple[tuple[str, str | bytes], ...]:
    """The trailers of the server's RATE_LIMITED: ErrorInfo and RetryInfo in the status."""
    info = error_details_pb2.ErrorInfo(
        reason="RATE_LIMITED",
        domain="creditledger.v1",
        metadata={"retry_after_ms": str(delay_ms), "request_id": request_id},
    )
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(delay_ms)
    status = status_pb2.Status(code=RX.value[0], message="slow down")
    for detail in (info, error_details_pb2.RetryInfo(retry_delay=delay)):
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


@pytest.mark.timeout(30)
async def test_per_call_timeout_bounds_the_whole_call(scripted: ScriptedServer) -> None:
    scripted.scripts["GetAccount"].failures = [Failure(U)] * 100_000
    # The client's defaults would keep retrying for 30 s; the call's own 0.5 s wins.
    async with LedgerClient(scripted.target, retry=FAST, total_timeout_s=30) as client:
        started = time.monotonic()
        # The last attempt ends UNAVAILABLE, or DEADLINE_EXCEEDED when the deadline cut it.
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await client.get_account("acct", timeout_s=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed  # a generous bound: it would be 30 s without the fix
    assert len(scripted.scripts["GetAccount"].calls) >= 2  # it did retry, inside the deadline


@pytest.mark.timeout(30)
def test_per_call_timeout_bounds_the_whole_call_blocking(scripted_thread: ScriptedServer) -> None:
    scripted_thread.scripts["GetAccount"].failures = [Failure(U)] * 100_000
    with SyncLedgerClient(scripted_thread.target, retry=FAST, total_timeout_s=30) as client:
        started = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            client.get_account("acct", timeout_s=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed


@pytest.mark.timeout(30)
async def test_retry_info_delay_is_waited_and_exposed(scripted: ScriptedServer) -> None:
    scripted.scripts["Charge"].failures = [Failure(RX, trailing=rate_limited(300, "srv-7"))]
    async with LedgerClient(scripted.target, retry=FAST) as client:
        result = await client.charge("acct", "crm_credits", 1)
    arrivals = scripted.scripts["Charge"].arrivals
    assert len(arrivals) == 2 and not result.replayed
    # FAST alone would come back within 10 ms; the server asked for 300 ms.
    assert arrivals[1] - arrivals[0] >= 0.3, arrivals


@pytest.mark.timeout(30)
async def test_retry_info_past_the_deadline_gives_up_with_the_delay(
    scripted: ScriptedServer,
) -> None:
    scripted.scripts["Charge"].failures = [Failure(RX, trailing=rate_limited(5_000, "srv-8"))]
    async with LedgerClient(scripted.target, retry=FAST) as client:
        with pytest.raises(RateLimited) as caught:
            await client.charge("acct", "crm_credits", 1, timeout_s=1.0)
    assert len(scripted.scripts["Charge"].calls) == 1  # waiting 5 s would pass the deadline
    assert caught.value.retry_delay_s == pytest.approx(5.0)
    assert caught.value.request_id == "srv-8"  # from the ErrorInfo metadata


async def test_request_id_is_sent_once_per_call_and_on_every_error(
    scripted: ScriptedServer,
) -> None:
    scripted.scripts["GetAccount"].failures = [Failure(U)] * 3
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)
    async with LedgerClient(scripted.target, retry=policy) as client:
        with pytest.raises(Unavailable) as caught:
            await client.get_account("acct")
    sent = [metadata[REQUEST_ID_HEADER] for _, metadata in scripted.scripts["GetAccount"].calls]
    assert len(sent) == 3 and len(set(sent)) == 1 and sent[0]  # one id for all attempts
    assert caught.value.request_id == sent[0]  # the server answered none: the one sent


async def test_server_request_id_from_the_trailer_wins(scripted: ScriptedServer) -> None:
    trailing = ((REQUEST_ID_HEADER, "srv-42"),)
    scripted.scripts["Settle"].failures = [
        Failure(grpc.StatusCode.FAILED_PRECONDITION, trailing=trailing)
    ]
    async with LedgerClient(scripted.target, retry=FAST) as client:
        with pytest.raises(FailedPrecondition) as caught:
            await client.settle("res-1", 1)
    assert caught.value.request_id == "srv-42"


async def test_per_call_metadata_and_the_callers_request_id(scripted: ScriptedServer) -> None:
    async with LedgerClient(scripted.target, metadata=[("x-team", "crm")]) as client:
        await client.charge(
            "acct",
            "crm_credits",
            1,
            call_metadata=[("x-job", "run-9"), (REQUEST_ID_HEADER, "mine-1")],
        )
        await client.get_account("acct", call_metadata=[("x-job", "run-10")])
    ((_, charge_md),) = scripted.scripts["Charge"].calls
    ((_, read_md),) = scripted.scripts["GetAccount"].calls
    assert (charge_md["x-team"], charge_md["x-job"], charge_md[REQUEST_ID_HEADER]) == (
        "crm",
        "run-9",
        "mine-1",
    )
    assert read_md["x-job"] == "run-10" and read_md[REQUEST_ID_HEADER] != "mine-1"


class _Stamp(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds a header and counts the attempts it sees."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        self.seen.append(str(details.method))
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("x-traced", "yes"))
        stamped = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )
        return await continuation(stamped, request)


async def test_interceptors_run_on_every_attempt(scripted: ScriptedServer) -> None:
    scripted.scripts["Charge"].failures = [Failure(U)]
    stamp = _Stamp()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)
    async with LedgerClient(scripted.target, retry=policy, interceptors=[stamp]) as client:
        await client.charge("acct", "crm_credits", 1)
    assert len(stamp.seen) == 2 and "/Charge" in stamp.seen[0]
    assert all(md["x-traced"] == "yes" for _, md in scripted.scripts["Charge"].calls)


class _SyncStamp(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.count = 0

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        self.count += 1
        return continuation(details, request)


async def test_blocking_client_takes_interceptors(scripted: ScriptedServer) -> None:
    stamp = _SyncStamp()

    def read() -> None:
        with SyncLedgerClient(scripted.target, interceptors=[stamp]) as client:
            client.get_account("acct")

    await asyncio.to_thread(read)
    assert stamp.count == 1


@pytest.fixture
def scripted_thread() -> Any:
    """A scripted server on its own loop in a thread, for the blocking client's tests."""
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, ScriptedServer] = {}

    async def serve() -> None:
        box["server"] = ScriptedServer()
        await box["server"].start()
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=10)
    ready.wait(10)
    yield box["server"]
    asyncio.run_coroutine_threadsafe(box["server"].stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
