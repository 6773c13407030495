"""The two starvation attacks of issue 15, as a process of their own (bounded in
time, loopback only), so that its CPU is not the server's event loop:

- `nobody`: many connections, each opening many GetBalance calls that send
  headers and never a request body, without a token; each refused call is
  opened again after PAUSE_S, until `seconds` pass;
- `token`: the same with a VALID token (env ATTACK_TOKEN): an authenticated
  caller trying to pin the server's slots;
- `watch`: many grpc.health.v1.Health/Watch streams (no credentials needed),
  held open until `seconds` pass.

With SOURCES (a comma list such as 127.0.0.2,127.0.0.3), the connections are
spread over those source addresses (tests/security/forward.py), so that the
server sees as many peers.

Prints "ready" once the first wave is opened, then one JSON line: how the
attack's calls ended, by status code ("OPEN" for those still open at the end).

    python -m tests.security.attacker TARGET MODE CONNECTIONS CALLS SECONDS [SOURCES]
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import sys
import time

import grpc
from creditledger.v1 import ledger_pb2 as pb
from grpc_health.v1 import health_pb2

from tests.security.forward import Forwarder

GET_BALANCE = "/creditledger.v1.LedgerService/GetBalance"
WATCH = "/grpc.health.v1.Health/Watch"
#: A refused call is opened again after about this pause (0.5-1.5x, so the
#: attempts spread out): a persistent attacker that keeps trying to hold
#: slots, about 1,600 attempts a second here, not a synchronized flood (a flood
#: of calls is volume, which the network in front has to absorb; docs/security.md).
PAUSE_S = 1.0


class _Never:
    """A request stream that sends nothing: the call's headers go, never its body."""

    def __aiter__(self) -> _Never:
        return self

    async def __anext__(self) -> pb.GetBalanceRequest:
        await asyncio.Event().wait()
        raise StopAsyncIteration  # pragma: no cover - never reached


async def _no_body(
    channel: grpc.aio.Channel,
    until: float,
    ends: collections.Counter[str],
    opened: asyncio.Event,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    call = channel.stream_unary(
        GET_BALANCE,
        request_serializer=pb.GetBalanceRequest.SerializeToString,
        response_deserializer=pb.GetBalanceResponse.FromString,
    )
    while time.monotonic() < until:
        rpc = call(_Never(), metadata=metadata, timeout=max(0.1, until - time.monotonic()))
        opened.set()
        try:
            await rpc
            ends["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            ends[exc.code().name] += 1
        await asyncio.sleep(PAUSE_S * random.uniform(0.5, 1.5))


async def _watch(
    channel: grpc.aio.Channel, until: float, ends: collections.Counter[str], opened: asyncio.Event
) -> None:
    call = channel.unary_stream(
        WATCH,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    rpc = call(health_pb2.HealthCheckRequest(), timeout=max(0.1, until - time.monotonic()))
    opened.set()
    try:
        async for _ in rpc:
            pass
        ends["OK"] += 1
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        # Our own timeout at the end of the attack: the stream was held open.
        ends["OPEN" if code == "DEADLINE_EXCEEDED" else code] += 1


async def attack(
    target: str, mode: str, connections: int, calls: int, seconds: float, sources: list[str]
) -> None:
    until = time.monotonic() + seconds
    ends: collections.Counter[str] = collections.Counter()
    opened = asyncio.Event()
    forwarders = [await Forwarder(target, source).start() for source in sources]
    targets = [f.target for f in forwarders] or [target]
    # A subchannel pool of its own per channel: one TCP connection each.
    channels = [
        grpc.aio.insecure_channel(
            targets[i % len(targets)], options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for i in range(connections)
    ]
    md = (("authorization", f"Bearer {os.environ['ATTACK_TOKEN']}"),) if mode == "token" else ()
    tasks = [
        asyncio.create_task(
            _watch(ch, until, ends, opened)
            if mode == "watch"
            else _no_body(ch, until, ends, opened, md)
        )
        for ch in channels
        for _ in range(calls)
    ]
    await opened.wait()
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    for ch in channels:
        await ch.close()
    for f in forwarders:
        await f.stop()
    print(json.dumps(dict(ends)), flush=True)


def main() -> None:
    # A real attacker runs on machines of its own; here it shares the server's
    # cores, so it yields them: the test measures the server's controls, not
    # which of two processes the kernel schedules.
    os.nice(19)
    target, mode, connections, calls, seconds = sys.argv[1:6]
    sources = [s for s in (sys.argv[6] if len(sys.argv) > 6 else "").split(",") if s]
    if mode not in ("nobody", "token", "watch"):
        raise SystemExit(f"unknown mode {mode}")
    asyncio.run(attack(target, mode, int(connections), int(calls), float(seconds), sources))


if __name__ == "__main__":
    main()
