"""Per-call context: the request id, and the W3C trace context when tracing is on.

The outermost interceptor. A caller may send `x-request-id` metadata (1 to
REQUEST_ID_LEN_MAX visible ASCII characters); otherwise, or when it is not
valid, the server makes one. The id is returned in the `x-request-id` trailer
and, on errors, in ErrorInfo metadata `request_id` (ledger.transport.status),
and every log line of the call carries it (ledger.observability.context).

With a tracer, the call's SERVER span continues the caller's `traceparent`
(W3C trace context) and the trace id goes into the log lines and the latency
histogram's exemplars.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ledger.observability.context import REQUEST_ID, TRACE_ID
from ledger.transport.status import REQUEST_ID_KEY

REQUEST_ID_LEN_MAX = 128
_VALID_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{REQUEST_ID_LEN_MAX}}}")
_TRACE_KEYS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def request_id_of(metadata: Any) -> str:
    """The caller's x-request-id when it is usable, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
                return value
            break
    # 128 random bits as 32 hex digits: unique enough to find log lines, and
    # several times cheaper than uuid4 (which reads os.urandom on every call).
    # Not a secret: nothing is authorised by it.
    return f"{random.getrandbits(128):032x}"


class CallContextInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id (and, with a tracer, the span) around every unary call."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streams (reflection) carry no ledger work
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, method),
            handler.request_deserializer,
            handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, inner: Callable[[Any, Any], Any], method: str) -> Callable[[Any, Any], Any]:
        tracer = self._tracer
        service, _, name = method.lstrip("/").rpartition("/")
        span_name = method.lstrip("/")

        async def untraced(request: Any, context: Any) -> Any:
            token = REQUEST_ID.set(request_id_of(context.invocation_metadata()))
            try:
                return await inner(request, context)
            finally:
                REQUEST_ID.reset(token)

        if tracer is None:
            return untraced

        async def traced(request: Any, context: Any) -> Any:
            metadata = context.invocation_metadata() or ()
            request_id = request_id_of(metadata)
            carrier = {k: v for k, v in metadata if k in _TRACE_KEYS and isinstance(v, str)}
            token = REQUEST_ID.set(request_id)
            with tracer.start_as_current_span(
                span_name,
                context=_PROPAGATOR.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": name,
                    "creditledger.request_id": request_id,
                },
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                ctx = span.get_span_context()
                trace_token = TRACE_ID.set(
                    format(ctx.trace_id, "032x") if ctx.trace_flags.sampled else ""
                )
                try:
                    return await inner(request, context)
                finally:
                    code = context.code()
                    value = code.value[0] if isinstance(code, grpc.StatusCode) else 0
                    span.set_attribute("rpc.grpc.status_code", value)
                    TRACE_ID.reset(trace_token)
                    REQUEST_ID.reset(token)

        return traced
