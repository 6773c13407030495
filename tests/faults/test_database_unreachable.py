"""Database unreachable: UNAVAILABLE within the deadline, NOT_SERVING, then back by itself.

The server reaches PostgreSQL through a proxy the test controls. Two ways of
losing it: "refuse" (connections reset, new ones refused: the host went down)
and "blackhole" (connections open but silent: a partition, where a client
without its own timeouts would hang past every deadline).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2

from tests.faults.calls import ASSET, balance, funded_account, new_key, sync_stub, until_definitive
from tests.faults.proxy import CutMode, TcpProxy
from tests.torture.rpc import call_sync
from tests.torture.server import LedgerServer, health_status, run_verify

DEADLINE_S = 5.0
# Slack for the reply to travel and for a loaded 2-core machine.
DEADLINE_SLACK_S = 1.0
HEALTH_TIMEOUT_S = 20.0

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def proxy(fresh_database_url: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy.for_database(fresh_database_url)
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_server(
    fresh_database_url: str, proxy: TcpProxy, tmp_path: Path
) -> Iterator[LedgerServer]:
    server = LedgerServer(proxy.url_for(fresh_database_url), tmp_path / "server.log")
    server.start()
    yield server
    server.stop()


def wait_health(target: str, want: str, timeout_s: float) -> float:
    """Seconds until health says `want`; fails the test after timeout_s."""
    start = time.monotonic()
    status = ""
    while time.monotonic() - start < timeout_s:
        status = health_status(target)
        if status == want:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"health still {status} after {timeout_s}s, wanted {want}")


def requests_while_down(account: str) -> list[tuple[str, Any]]:
    return [
        (
            "Grant",
            ledger_pb2.GrantRequest(
                account_id=account, asset=ASSET, amount=5, idempotency_key=new_key()
            ),
        ),
        (
            "Reserve",
            ledger_pb2.ReserveRequest(
                account_id=account, asset=ASSET, amount=3, idempotency_key=new_key()
            ),
        ),
        (
            "Charge",
            ledger_pb2.ChargeRequest(
                account_id=account, asset=ASSET, amount=2, idempotency_key=new_key()
            ),
        ),
        ("GetBalance", ledger_pb2.GetBalanceRequest(account_id=account, asset=ASSET)),
        ("ListEntries", ledger_pb2.ListEntriesRequest(account_id=account)),
    ]


@pytest.mark.parametrize(
    "mode",
    [
        "refuse",
        "blackhole",
    ],
)
def test_database_loss_fails_fast_and_heals_without_restart(
    mode: CutMode, proxied_server: LedgerServer, proxy: TcpProxy, fresh_database_url: str
) -> None:
    pid = proxied_server.pid
    with sync_stub(proxied_server.target) as stub:
        account = funded_account(stub, 100)
        proxy.cut(mode)
        failed: list[tuple[str, Any]] = []
        for method, request in requests_while_down(account):
            started = time.monotonic()
            result = call_sync(getattr(stub, method), request, DEADLINE_S)
            elapsed = time.monotonic() - started
            assert result.code == grpc.StatusCode.UNAVAILABLE, (
                f"{method} while the database is {mode}d: {result.describe()} {result.message} after {elapsed:.1f}s"
            )
            assert elapsed < DEADLINE_S + DEADLINE_SLACK_S, f"{method} took {elapsed:.1f}s"
            if result.reason:
                assert result.reason == "DATABASE_UNAVAILABLE"
            failed.append((method, request))
        wait_health(proxied_server.target, "NOT_SERVING", HEALTH_TIMEOUT_S)

        proxy.restore()
        wait_health(proxied_server.target, "SERVING", HEALTH_TIMEOUT_S)
        assert proxied_server.alive() and proxied_server.pid == pid, "the server had to restart"
        # A transient failure recorded nothing: the same keys now run for real.
        for method, request in failed:
            result = until_definitive(getattr(stub, method), request, timeout_s=30)
            assert result.ok, (
                f"{method} after the database came back: {result.describe()} {result.message}"
            )
            assert not result.replayed, (
                f"{method}: the UNAVAILABLE outcome was stored under its key"
            )
        after = balance(stub, account)
        assert (after.granted, after.reserved, after.settled) == (105, 3, 2)
        assert after.available == 100 + 5 - 3 - 2
    code, output = run_verify(fresh_database_url)
    assert code == 0, output


def test_server_starting_without_database_serves_once_it_appears(
    fresh_database_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """A server started while PostgreSQL is unreachable answers NOT_SERVING, then recovers."""
    proxy.cut("refuse")
    server = LedgerServer(proxy.url_for(fresh_database_url), tmp_path / "server.log")
    server.start(wait=False)
    try:
        time.sleep(3)
        if not server.alive():
            pytest.skip(
                "the server exits when the database is down at start (a supervisor restarts it)"
            )
        assert health_status(server.target) in ("NOT_SERVING", "UNAVAILABLE")
        proxy.restore()
        server.wait_serving(timeout_s=60)
        with sync_stub(server.target) as stub:
            account = funded_account(stub, 10)
            assert balance(stub, account).available == 10
    finally:
        server.stop()
