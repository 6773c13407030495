"""Call slots (ledger/transport/slots.py): calls in flight per connection, per
peer and of address-only peers, for every RPC; and the body wait that applies
to calls with a valid token too.

The server here has small limits: 4 calls per connection, 6 per peer, 8 of
address-only peers together, 2 s for a body. A "held" call sends its headers
and never its body, as the issue's attack does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from ledger.app import App
from ledger.transport.door import DoorLimits
from ledger.transport.slots import Slots
from tests.security.certs import Pair
from tests.security.conftest import Pki, _config, bearer, refusal
from tests.security.forward import Forwarder
from tests.support.db import TestDatabase

pytestmark = pytest.mark.timeout(60)

PER_CONNECTION, PER_PEER, ANONYMOUS, BODY_WAIT_S = 4, 6, 8, 2.0
GET_BALANCE = "/creditledger.v1.LedgerService/GetBalance"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Time for the server to take the held calls' slots (they are refused at once otherwise).
SETTLE_S = 0.3


@pytest.fixture(scope="module")
async def small(callers_path: Path) -> AsyncIterator[App]:
    # A database of its own: a server of this module elected writer of the session's
    # database would hand the lease over when it stops, and a session server's call
    # forwarded at that instant would answer WRITER_UNAVAILABLE (retryable) to a test
    # that does not retry.
    db = await TestDatabase.create(prefix="ledger_slots")
    app = App(
        _config(
            db.url,
            callers_file=callers_path,
            calls_per_connection_max=PER_CONNECTION,
            calls_per_peer_max=PER_PEER,
            anonymous_calls_max=ANONYMOUS,
            body_wait_s=BODY_WAIT_S,
        )
    )
    await app.start()
    yield app
    await app.stop()
    await db.drop()


class _Never:
    """A request stream that sends nothing: the call's headers go, never its body."""

    def __aiter__(self) -> _Never:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()
        raise StopAsyncIteration  # pragma: no cover - never reached


def _channel(target: str) -> grpc.aio.Channel:
    # A subchannel pool of its own: one TCP connection per channel.
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _hold(
    channel: grpc.aio.Channel,
    n: int,
    md: tuple[tuple[str, str], ...] = (),
    method: str = GET_BALANCE,
) -> list[Any]:
    call: Any = channel.stream_unary(method)
    return [call(_Never(), metadata=md, timeout=20) for _ in range(n)]


async def _outcome(call: Any) -> tuple[grpc.aio.AioRpcError | None, float]:
    t0 = time.monotonic()
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc, time.monotonic() - t0
    return None, time.monotonic() - t0


async def _release(calls: list[Any]) -> None:
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(SETTLE_S)  # the server's handlers see the cancellation


def _refused_count(limit: str) -> float:
    value = REGISTRY.get_sample_value("ledger_call_limit_refusals_total", {"limit": limit})
    return value or 0.0


async def _assert_refused(call: Any, limit: str, value: int) -> None:
    before = _refused_count(limit.lower())
    err, elapsed = await _outcome(call)
    assert err is not None, "the call past the limit was served"
    r = refusal(err)
    assert (r.code, r.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CONCURRENT_CALLS")
    assert r.metadata["limit"] == limit and r.metadata["limit_value"] == str(value), r
    assert limit in r.message, r.message
    assert r.retry_delay_s is not None and r.retry_delay_s > 0
    assert elapsed < 1.0, f"refused after {elapsed:.2f} s, not at once"
    assert _refused_count(limit.lower()) == before + 1


async def _account(app: App, tokens: dict[str, str], name: str) -> str:
    account = f"tenant-a:slots-{name}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        try:
            await stub.CreateAccount(
                pb.CreateAccountRequest(account_id=account), metadata=bearer(tokens["admin"])
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
    return account


async def _served(app: App, token: str, account: str) -> None:
    """A call of another caller, on a connection of its own, is served."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        await stub.GetBalance(
            pb.GetBalanceRequest(account_id=account, asset="crm_credits"),
            metadata=bearer(token),
            timeout=5,
        )


async def test_a_body_less_call_with_a_valid_token_ends_after_the_body_wait(
    small: App, tokens: dict[str, str]
) -> None:
    async with _channel(f"127.0.0.1:{small.port}") as ch:
        (call,) = _hold(ch, 1, bearer(tokens["tenant-a"]))
        err, elapsed = await _outcome(call)
    assert err is not None
    r = refusal(err)
    # The server's DEADLINE_EXCEEDED (ErrorInfo), not the client's own 20 s timeout.
    assert (r.code, r.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"), r
    assert "BODY_WAIT_S" in r.message, r.message
    assert BODY_WAIT_S - 0.2 <= elapsed <= BODY_WAIT_S + 1.5, elapsed


async def test_a_caller_is_capped_per_connection_and_per_peer(
    small: App, tokens: dict[str, str]
) -> None:
    account = await _account(small, tokens, "capped")
    md = bearer(tokens["spender"])
    target = f"127.0.0.1:{small.port}"
    async with _channel(target) as first, _channel(target) as second:
        held = _hold(first, PER_CONNECTION, md)
        await asyncio.sleep(SETTLE_S)
        (over,) = _hold(first, 1, md)
        await _assert_refused(over, "CALLS_PER_CONNECTION_MAX", PER_CONNECTION)
        # The same caller on another connection: up to its peer limit.
        held += _hold(second, PER_PEER - PER_CONNECTION, md)
        await asyncio.sleep(SETTLE_S)
        (over,) = _hold(second, 1, md)
        await _assert_refused(over, "CALLS_PER_PEER_MAX", PER_PEER)
        # Another caller from the same address is not held up by it.
        await _served(small, tokens["tenant-a"], account)
        assert not any(call.done() for call in held), "a held call ended early"
        await _release(held)
        # Slots are given back when calls end: the caller may hold as many again.
        held = _hold(first, PER_CONNECTION, md) + _hold(second, PER_PEER - PER_CONNECTION, md)
        await asyncio.sleep(SETTLE_S)
        assert not any(call.done() for call in held), "slots were not given back"
        await _release(held)


async def test_address_only_peers_are_capped_one_by_one_and_together(
    small: App, tokens: dict[str, str]
) -> None:
    """Health calls need no credentials: their peer is their address (per peer
    limit), and all such calls share ANONYMOUS_CALLS_MAX, whatever the address."""
    account = await _account(small, tokens, "anonymous")
    target = f"127.0.0.1:{small.port}"
    other = await Forwarder(target, "127.0.0.2").start()
    try:
        async with _channel(target) as a1, _channel(target) as a2, _channel(other.target) as b1:
            held = _hold(a1, PER_CONNECTION, method=HEALTH_CHECK)
            held += _hold(a2, PER_PEER - PER_CONNECTION, method=HEALTH_CHECK)
            await asyncio.sleep(SETTLE_S)
            (over,) = _hold(a2, 1, method=HEALTH_CHECK)
            await _assert_refused(over, "CALLS_PER_PEER_MAX", PER_PEER)
            # From another address: a peer of its own, but the same anonymous pool.
            held += _hold(b1, ANONYMOUS - PER_PEER, method=HEALTH_CHECK)
            await asyncio.sleep(SETTLE_S)
            (over,) = _hold(b1, 1, method=HEALTH_CHECK)
            await _assert_refused(over, "ANONYMOUS_CALLS_MAX", ANONYMOUS)
            # A caller with a token is not an address-only peer: still served.
            await _served(small, tokens["tenant-a"], account)
            assert not any(call.done() for call in held)
            await _release(held)
            # Health answers again once the holders are gone.
            check = b1.unary_unary(
                HEALTH_CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            reply = await check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await other.stop()


async def test_the_forwarder_gives_the_server_another_peer_address(small: App) -> None:
    """What the test above relies on: the server sees 127.0.0.2 as the peer."""
    seen: list[str] = []
    server = grpc.aio.server()

    async def peer(_request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen.append(context.peer())
        return b""

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T", {"P": grpc.unary_unary_rpc_method_handler(peer)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    fwd = await Forwarder(f"127.0.0.1:{port}", "127.0.0.2").start()
    try:
        async with _channel(fwd.target) as ch:
            ping: Any = ch.unary_unary("/t.T/P")
            await ping(b"", timeout=5)
    finally:
        await fwd.stop()
        await server.stop(None)
    assert seen and seen[0].startswith("ipv4:127.0.0.2:"), seen


@pytest.fixture(scope="module")
async def small_mtls(callers_path: Path, pki: Pki) -> AsyncIterator[App]:
    db = await TestDatabase.create(prefix="ledger_slots_mtls")  # as `small`
    app = App(
        _config(
            db.url,
            callers_file=callers_path,
            tls_cert=pki.server.cert_path,
            tls_key=pki.server.key_path,
            tls_client_ca=pki.ca.cert_path,
            calls_per_connection_max=PER_CONNECTION,
            calls_per_peer_max=PER_PEER,
            anonymous_calls_max=ANONYMOUS,
            body_wait_s=BODY_WAIT_S,
        )
    )
    await app.start()
    yield app
    await app.stop()
    await db.drop()


def _mtls(app: App, pki: Pki, client: Pair) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(pki.ca.cert_pem, client.key_pem, client.cert_pem)
    return grpc.aio.secure_channel(
        f"localhost:{app.port}", creds, options=[("grpc.use_local_subchannel_pool", 1)]
    )


async def test_under_mutual_tls_a_certificate_is_a_peer(small_mtls: App, pki: Pki) -> None:
    """Calls without a token are the peer their client certificate names: another
    certificate from the same address is another peer, and is served."""
    async with (
        _mtls(small_mtls, pki, pki.billing) as first,
        _mtls(small_mtls, pki, pki.billing) as second,
        _mtls(small_mtls, pki, pki.cn_only) as other,
    ):
        held = _hold(first, PER_CONNECTION) + _hold(second, PER_PEER - PER_CONNECTION)
        await asyncio.sleep(SETTLE_S)
        (over,) = _hold(second, 1)
        await _assert_refused(over, "CALLS_PER_PEER_MAX", PER_PEER)
        stub = ledger_pb2_grpc.LedgerServiceStub(other)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetBalance(
                pb.GetBalanceRequest(account_id="tenant-a:none", asset="x"), timeout=5
            )
        # Served: the caller "cn-only" may read every prefix; the account does not exist.
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value
        assert not any(call.done() for call in held)
        await _release(held)


def test_slots_forget_peers_whose_calls_ended() -> None:
    """Memory: the maps hold only peers and connections with calls in flight."""
    slots = Slots(DoorLimits(calls_per_connection_max=2, calls_per_peer_max=3))
    held = [
        (f"ipv4:10.0.{i}.1:{5000 + j}", f"addr:10.0.{i}.1", True)
        for i in range(50)
        for j in range(2)
    ]
    for h in held:
        assert slots.enter(*h) is None
    assert slots.in_flight() == 100 and slots.anonymous == 100
    for h in held:
        slots.leave(*h)
    assert slots.in_flight() == 0 and slots.anonymous == 0
    assert not slots._by_peer and not slots._by_connection
