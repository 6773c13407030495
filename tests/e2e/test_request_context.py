"""Request ids and traces: a caller's error can be matched with the server's log lines.

A server of its own (real grpc.aio on loopback, real PostgreSQL) with tracing on,
exporting to an in-memory span exporter.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.exposition import generate_latest

from ledger.app import App, Hooks
from ledger.config import Config
from ledger.observability.context import ContextFilter
from tests.conftest import key
from tests.support.process import free_port
from tests.support.rpc import error_info

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


class Traced:
    def __init__(self, app: App, exporter: InMemorySpanExporter) -> None:
        self.app = app
        self.exporter = exporter
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        self.stub = ledger_pb2_grpc.LedgerServiceStub(self.channel)


@pytest.fixture(scope="module")
async def traced(database_url: str) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    # The production sampler; a synchronous processor, so a span is in the exporter
    # when its call returns.
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App(
        Config(listen="127.0.0.1:0", database_url=database_url, metrics_listen=""),
        hooks=Hooks(tracer_provider=provider),
    )
    await app.start()
    server = Traced(app, exporter)
    yield server
    await server.channel.close()
    await app.stop()


def _rpc_records(caplog: pytest.LogCaptureFixture, method: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "ledger.rpc" and getattr(r, "rpc", {}).get("method") == method
    ]


async def _rpc_record(
    caplog: pytest.LogCaptureFixture, method: str, request_id: str
) -> logging.LogRecord:
    """The call's log line. The server logs it after the answer is on its way, so the
    client (on the same event loop) can see the answer first: wait for the line."""
    for _ in range(500):
        found = [r for r in _rpc_records(caplog, method) if r.rpc["request_id"] == request_id]  # type: ignore[attr-defined]
        if found:
            (record,) = found
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {method} log line with request_id {request_id}")


def _trailer(call_metadata: Any, name: str) -> str | None:
    for k, v in call_metadata or ():
        if k == name:
            return str(v)
    return None


async def test_a_request_id_sent_comes_back_in_trailers_and_in_the_log_line(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ledger.rpc")
    caplog.handler.addFilter(ContextFilter())
    request_id = f"caller-{uuid.uuid4().hex}"
    account = f"rid-{uuid.uuid4().hex[:10]}"
    call = traced.stub.CreateAccount(
        pb.CreateAccountRequest(account_id=account), metadata=(("x-request-id", request_id),)
    )
    await call
    assert _trailer(await call.trailing_metadata(), "x-request-id") == request_id
    record = await _rpc_record(caplog, "CreateAccount", request_id)
    assert record.request_id == request_id  # type: ignore[attr-defined]  # the filter's field


async def test_an_error_carries_the_request_id_in_error_info_trailers_and_log(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ledger.rpc")
    request_id = f"err-{uuid.uuid4().hex}"
    missing = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await traced.stub.Settle(
            pb.SettleRequest(reservation_id=missing, amount=1, idempotency_key=key()),
            metadata=(("x-request-id", request_id),),
        )
    err = caught.value
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(err)
    assert info.metadata["request_id"] == request_id
    assert _trailer(err.trailing_metadata(), "x-request-id") == request_id
    record = await _rpc_record(caplog, "Settle", request_id)
    # Settle's log line names its reservation, which it did not before.
    assert record.rpc["reservation_id"] == missing  # type: ignore[attr-defined]
    assert record.rpc["reason"] == "RESERVATION_NOT_FOUND"  # type: ignore[attr-defined]


# gRPC itself refuses control characters and non-ASCII in metadata values.
@pytest.mark.parametrize("sent", ["", "x" * 129, "has space"], ids=["none", "too-long", "space"])
async def test_an_unusable_or_missing_request_id_is_replaced_by_one_the_server_makes(
    traced: Traced, sent: str
) -> None:
    metadata = (("x-request-id", sent),) if sent else ()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await traced.stub.GetAccount(
            pb.GetAccountRequest(account_id=f"nobody-{uuid.uuid4().hex[:8]}"), metadata=metadata
        )
    made = error_info(caught.value).metadata["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made), made
    assert _trailer(caught.value.trailing_metadata(), "x-request-id") == made


async def test_a_traceparent_sent_is_continued_and_the_latency_exemplar_names_the_trace(
    traced: Traced,
) -> None:
    traced.exporter.clear()
    account = f"trace-{uuid.uuid4().hex[:10]}"
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    request_id = f"tp-{uuid.uuid4().hex}"
    await traced.stub.CreateAccount(
        pb.CreateAccountRequest(account_id=account),
        metadata=(("traceparent", traceparent), ("x-request-id", request_id)),
    )
    spans = [
        s
        for s in traced.exporter.get_finished_spans()
        if s.attributes is not None and s.attributes.get("creditledger.request_id") == request_id
    ]
    assert spans, "no span for the call"
    span = spans[0]
    assert span.name == "creditledger.v1.LedgerService/CreateAccount"
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 0
    exposition = generate_latest(REGISTRY).decode()  # type: ignore[no-untyped-call]
    exemplars = [
        line
        for line in exposition.splitlines()
        if line.startswith("grpc_server_handling_seconds_bucket")
        and 'grpc_method="CreateAccount"' in line
        and f'trace_id="{TRACE_ID}"' in line
    ]
    assert exemplars, "no latency exemplar with the caller's trace id"


async def test_without_a_traceparent_the_server_starts_a_trace(traced: Traced) -> None:
    traced.exporter.clear()
    request_id = f"root-{uuid.uuid4().hex}"
    with pytest.raises(grpc.aio.AioRpcError):
        await traced.stub.GetReservation(
            pb.GetReservationRequest(reservation_id=str(uuid.uuid4())),
            metadata=(("x-request-id", request_id),),
        )
    (span,) = [
        s
        for s in traced.exporter.get_finished_spans()
        if s.attributes is not None and s.attributes.get("creditledger.request_id") == request_id
    ]
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_an_otlp_endpoint_that_is_down_costs_callers_nothing(database_url: str) -> None:
    """--otlp-endpoint with no collector behind it: calls answer as ever, and the
    server still stops (the flush gives up after EXPORT_TIMEOUT_S)."""
    app = App(
        Config(
            listen="127.0.0.1:0",
            database_url=database_url,
            metrics_listen="",
            otlp_endpoint=f"http://127.0.0.1:{free_port()}",
        )
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            account = f"otlp-{uuid.uuid4().hex[:10]}"
            call = stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
            await call
            assert _trailer(await call.trailing_metadata(), "x-request-id")
    finally:
        await app.stop()
