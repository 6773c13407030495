"""Connection limits of issue 15, item 1: idle and age limits and keepalive
enforcement, as gRPC applies the server's options (ledger.transport.server.
server_options, which build_server and build_health_server pass to gRPC).

Each test serves a trivial method with exactly those options (small values
where the defaults are minutes) and watches what a client connection sees:
a connection closed by the server turns the client's channel from READY to
IDLE (or TRANSIENT_FAILURE), and a stream past the connection's age and grace
is ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from ledger.transport.server import ServerSettings, server_options

pytestmark = pytest.mark.timeout(60)

READY = grpc.ChannelConnectivity.READY


async def _serve(settings: ServerSettings) -> tuple[grpc.aio.Server, str]:
    async def ping(_request: bytes, _context: Any) -> bytes:
        return b""

    async def hold(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        yield b""
        await asyncio.sleep(3600)

    server = grpc.aio.server(options=server_options(settings))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T",
                {
                    "Ping": grpc.unary_unary_rpc_method_handler(ping),
                    "Hold": grpc.unary_stream_rpc_method_handler(hold),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _ready(target: str, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1), *(options or [])]
    )
    ping: Any = channel.unary_unary("/t.T/Ping")
    await ping(b"", timeout=5)
    assert channel.get_state() == READY
    return channel


async def _left_ready(channel: grpc.aio.Channel, within_s: float) -> float | None:
    """Seconds until the channel's connection was closed, or None if it stayed READY."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        if channel.get_state() != READY:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return None


def test_the_defaults_are_the_documented_ones() -> None:
    options = dict(server_options(ServerSettings()))
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 60_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.max_concurrent_streams"] == 256


async def test_an_idle_connection_is_closed() -> None:
    server, target = await _serve(ServerSettings(connection_idle_s=1.0))
    try:
        channel = await _ready(target)
        closed = await _left_ready(channel, 6.0)
        await channel.close()
    finally:
        await server.stop(None)
    assert closed is not None and closed >= 0.5, closed


async def test_a_connection_past_its_age_and_grace_loses_its_streams() -> None:
    server, target = await _serve(
        ServerSettings(connection_age_s=1.0, connection_age_grace_s=1.0, connection_idle_s=60.0)
    )
    try:
        channel = await _ready(target)
        hold: Any = channel.unary_stream("/t.T/Hold")
        stream = hold(b"", timeout=20)
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        ended_s = time.monotonic() - t0
        await channel.close()
    finally:
        await server.stop(None)
    # Ended by the server (age 1 s + grace 1 s, gRPC adds up to 10% jitter), not by the 20 s timeout.
    assert info.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED, info.value
    assert ended_s < 8.0, ended_s


async def test_a_client_that_pings_too_often_is_disconnected() -> None:
    server, target = await _serve(ServerSettings(connection_idle_s=60.0))
    eager = [
        ("grpc.keepalive_time_ms", 200),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    try:
        polite = await _ready(target)
        pinger = await _ready(target, eager)
        # Strikes past ping_strikes_max (2) at one ping per 200 ms: a GOAWAY
        # (too_many_pings) within seconds; the polite connection stays.
        closed = await _left_ready(pinger, 8.0)
        assert closed is not None, "the connection that pinged every 200 ms stayed open"
        assert polite.get_state() == READY
        await pinger.close()
        await polite.close()
    finally:
        await server.stop(None)
