"""OpenTelemetry tracing, off unless an OTLP endpoint is configured (--otlp-endpoint).

The server continues a caller's W3C trace context (`traceparent` metadata;
ledger.transport.calls) and exports one SERVER span per call. Sampling is
parent-based: a caller's sampled flag is obeyed; calls without a parent are
sampled at --trace-sample-ratio. Spans carry method, status code and request
id, never account ids, amounts, keys or tokens.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

SERVICE_NAME = "creditledger"
# Bounds each export, retries included, and so the flush at shutdown when the
# collector is away: it must fit terminationGracePeriodSeconds after the drain.
EXPORT_TIMEOUT_S = 3


def provider(exporter: SpanExporter, sample_ratio: float, version: str) -> TracerProvider:
    """A tracer provider exporting in the background (spans dropped, never blocking, when
    the collector is slow or away)."""
    tracer_provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME, "service.version": version}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    return tracer_provider


def otlp_provider(endpoint: str, sample_ratio: float, version: str) -> TracerProvider:
    """Spans to an OTLP/gRPC collector, e.g. http://otel-collector:4317 (https:// for TLS)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    insecure = endpoint.startswith("http://")
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure, timeout=EXPORT_TIMEOUT_S)
    return provider(exporter, sample_ratio, version)
