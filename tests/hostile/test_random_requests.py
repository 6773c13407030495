"""Thousands of hostile requests through the real stub, and raw random bytes as messages.

Every reply must be OK or one of the expected refusals; never INTERNAL or
UNKNOWN, never a hang. The server must still be up afterwards and `ledger
verify` must pass: whatever got through was booked correctly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2, ledger_pb2_grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.faults.calls import funded_account, new_key
from tests.hostile.strategies import draw_request, typed, typed_given
from tests.torture.rpc import call_sync
from tests.torture.server import LedgerServer, health_status, run_verify

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}
# A serialized request over the server's 64 KiB limit is refused by gRPC itself.
MESSAGE_BYTES_MAX = 64 * 1024
METHODS = [m.name for m in ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].methods]
# Server-streaming methods (WatchTransactions): a valid request opens a stream that
# runs until the caller's deadline, so for them that deadline is an answer too.
STREAMING = {
    m.name
    for m in ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].methods
    if m.server_streaming
}


def hypothesis_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
        database=None,
    )


pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class Target:
    """The server under attack, with a few real accounts and reservations to aim at."""

    def __init__(self, server: LedgerServer) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self.stub = ledger_pb2_grpc.LedgerServiceStub(self.channel)
        self.accounts = [funded_account(self.stub, 10**6) for _ in range(3)]
        self.reservations = []
        for account in self.accounts:
            req = ledger_pb2.ReserveRequest(
                account_id=account, asset="crm_credits", amount=10, idempotency_key=new_key()
            )
            self.reservations.append(self.stub.Reserve(req, timeout=10).reservation.reservation_id)
        self.codes: Counter[str] = Counter()


@pytest.fixture
def target(ledger_process: LedgerServer) -> Iterator[Target]:
    t = Target(ledger_process)
    yield t
    t.channel.close()


def check_reply(t: Target, method: str, request: Any) -> None:
    result = call_sync(getattr(t.stub, method), request, 10.0)
    t.codes[result.code.name] += 1
    if result.code == grpc.StatusCode.RESOURCE_EXHAUSTED and request.ByteSize() > MESSAGE_BYTES_MAX:
        return
    assert result.code in ALLOWED, (
        f"{method} {str(request)[:500]!r} -> {result.describe()}: {result.message}"
    )


def test_random_requests_get_expected_statuses(target: Target, fresh_database_url: str) -> None:
    @typed(hypothesis_settings(1500))
    @typed_given(st.data())
    def run(data: Any) -> None:
        method, request = draw_request(data.draw, target.accounts, target.reservations)
        check_reply(target, method, request)

    run()
    print("codes:", dict(target.codes))
    assert target.codes["OK"] > 0 and target.codes["INVALID_ARGUMENT"] > 0, target.codes
    assert health_status(target.server.target) == "SERVING"
    code, output = run_verify(fresh_database_url)
    assert code == 0, output


def test_random_bytes_as_messages(target: Target, fresh_database_url: str) -> None:
    calls: dict[str, Any] = {
        m: target.channel.unary_unary(
            f"/creditledger.v1.LedgerService/{m}",
            request_serializer=None,
            response_deserializer=None,
        )
        for m in METHODS
    }

    @typed(hypothesis_settings(2000))
    @typed_given(st.sampled_from(METHODS), st.binary(max_size=3000))
    def run(method: str, payload: bytes) -> None:
        result = call_sync(calls[method], payload, 2.0 if method in STREAMING else 10.0)
        target.codes[result.code.name] += 1
        allowed = ALLOWED | {grpc.StatusCode.DEADLINE_EXCEEDED} if method in STREAMING else ALLOWED
        assert result.code in allowed, (
            f"{method} {payload[:100]!r} -> {result.describe()}: {result.message}"
        )

    run()
    print("codes:", dict(target.codes))
    assert health_status(target.server.target) == "SERVING"
    code, output = run_verify(fresh_database_url)
    assert code == 0, output
