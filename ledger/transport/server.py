"""The grpc.aio server: LedgerService with status mapping, metrics and
request logs, plus grpc.health.v1 and server reflection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2 as pb
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from ledger.domain import errors, limits
from ledger.domain.errors import FieldViolation
from ledger.observability import metrics
from ledger.observability.context import REQUEST_ID, RESERVATION_ID, TRACE_ID
from ledger.transport import auth, status
from ledger.transport.door import DoorLimits, HealthDoor
from ledger.transport.servicer import LedgerServicer
from ledger.transport.slots import SlotInterceptor

log = logging.getLogger("ledger.rpc")

SERVICE = pb.DESCRIPTOR.services_by_name["LedgerService"].full_name
HEALTH_SERVICES = ("", SERVICE)
# A reservation id is a UUID; a longer value (bad input) is cut in log lines.
_LOGGED_ID_LEN_MAX = 64


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    message_bytes_max: int = limits.MESSAGE_BYTES_MAX
    concurrent_streams_max: int = 256
    concurrent_rpcs_max: int = 4096
    drain_s: float = 10.0
    #: A unary call that carries no deadline of its own gets this one
    #: (DEADLINE_EXCEEDED), so no call holds a slot for ever (docs/security.md).
    unary_deadline_s: float = 30.0
    #: Connections: closed after this long without a call, and after this long
    #: at all (then given the grace to finish their calls), so a client cannot
    #: hold a connection, or pin itself to one replica, for ever.
    connection_idle_s: float = 300.0
    connection_age_s: float = 1800.0
    connection_age_grace_s: float = 60.0
    #: Keepalive enforcement: pings closer than this without a call in flight
    #: count as strikes; past the strikes the connection is closed (GOAWAY).
    ping_interval_min_s: float = 10.0
    ping_strikes_max: int = 2
    door: DoorLimits = field(default_factory=DoorLimits)
    #: Mutual TLS: calls may carry a client certificate, a peer's identity
    #: when they carry no token (ledger.transport.slots).
    client_certificates: bool = False
    # Front processes of one `serve --fronts N` share the port (SO_REUSEPORT).
    reuse_port: bool = False


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """The grpc core options that bound connections and keepalive (docs/security.md)."""
    return [
        # Each method holds its own limit (MESSAGE_BYTES_MAX, SubmitBatch's
        # BATCH_BYTES_MAX) when decoding, answering INVALID_ARGUMENT that names
        # it; gRPC's own limit, twice the largest, only stops what is far over.
        (
            "grpc.max_receive_message_length",
            2 * max(settings.message_bytes_max, limits.BATCH_BYTES_MAX),
        ),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.max_concurrent_streams", settings.concurrent_streams_max),
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.max_connection_idle_ms", int(settings.connection_idle_s * 1000)),
        ("grpc.max_connection_age_ms", int(settings.connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.connection_age_grace_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.ping_interval_min_s * 1000)),
        # Clients may ping while no call is in flight (at most every
        # ping_interval_min_s): gRPC clients with keepalive do, to keep idle
        # connections through NATs. Faster pings are strikes.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", settings.ping_strikes_max),
    ]


class _Undecodable:
    """Stands for a request whose bytes did not parse; answered INVALID_ARGUMENT."""

    def __init__(self, error: str) -> None:
        self.error = error

    def describe(self, cls: type[Any]) -> str:
        return f"not a valid {cls.__name__} ({self.error})"


class _TooLarge(_Undecodable):
    """A request over its method's size limit (the transport's own limit is the
    largest of them, SubmitBatch's)."""

    def __init__(self, size: int, bytes_max: int, limit_name: str) -> None:
        super().__init__(f"{size} bytes")
        self.bytes_max = bytes_max
        self.limit_name = limit_name

    def describe(self, cls: type[Any]) -> str:
        return f"must be at most {self.bytes_max} bytes ({self.limit_name}); it has {self.error}"


def _tolerant(
    cls: type[Any], bytes_max: int = limits.MESSAGE_BYTES_MAX, limit_name: str = "MESSAGE_BYTES_MAX"
) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if len(data) > bytes_max:
            return _TooLarge(len(data), bytes_max, limit_name)
        try:
            return cls.FromString(data)
        except Exception as exc:  # a malformed message is bad input, never INTERNAL
            return _Undecodable(type(exc).__name__)

    return deserialize


Impl = Callable[[Any, Any], Awaitable[tuple[Any, bool]]]


def _handler(
    name: str,
    impl: Impl,
    req_cls: type[Any],
    resp_cls: type[Any],
    deadline_s: float,
    message_bytes_max: int = limits.MESSAGE_BYTES_MAX,
) -> grpc.RpcMethodHandler[Any, Any]:
    started = metrics.GRPC_STARTED.labels("unary", SERVICE, name)
    latency = metrics.GRPC_HANDLING_SECONDS.labels("unary", SERVICE, name)
    received = metrics.GRPC_MSG_RECEIVED.labels("unary", SERVICE, name)
    sent = metrics.GRPC_MSG_SENT.labels("unary", SERVICE, name)
    handled = {
        code: metrics.GRPC_HANDLED.labels(
            "unary", SERVICE, name, metrics.grpc_code_label(code.name)
        )
        for code in grpc.StatusCode
    }

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        t0 = time.perf_counter()
        started.inc()
        received.inc()
        code = grpc.StatusCode.OK
        reason = ""
        replayed = False
        # Settle, Release, Refund, GetReservation: every log line names the reservation.
        reservation_id = str(getattr(request, "reservation_id", ""))[:_LOGGED_ID_LEN_MAX]
        res_token = RESERVATION_ID.set(reservation_id) if reservation_id else None
        try:
            if isinstance(request, _Undecodable):
                raise errors.InvalidArgument([FieldViolation("request", request.describe(req_cls))])
            if context.time_remaining() is None:
                # No deadline from the caller: the server's own (DEADLINE_EXCEEDED).
                try:
                    async with asyncio.timeout(deadline_s):
                        response, replayed = await impl(request, context)
                except TimeoutError:
                    raise errors.DeadlineExceeded(
                        f"the call carried no deadline and ran past the server's"
                        f" {deadline_s:g} s (UNARY_DEADLINE_S)"
                    ) from None
            else:
                response, replayed = await impl(request, context)
            context.set_trailing_metadata(status.success_trailers(replayed))
            sent.inc()
            return response
        except errors.LedgerError as exc:
            code, message, trailing = status.to_status(exc)
            reason, replayed = exc.reason, exc.replayed
            await context.abort(code, message, trailing_metadata=trailing)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code, reason = grpc.StatusCode.INTERNAL, "INTERNAL"
            log.exception("%s failed with an internal error", name)
            err = errors.LedgerError("internal error; it has been logged")
            c, message, trailing = status.to_status(err)
            await context.abort(c, message, trailing_metadata=trailing)
        finally:
            elapsed = time.perf_counter() - t0
            trace_id = TRACE_ID.get()
            latency.observe(elapsed, {"trace_id": trace_id} if trace_id else None)
            handled[code].inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "rpc",
                    extra={
                        "rpc": {
                            "method": name,
                            "request_id": REQUEST_ID.get(),
                            "code": code.name,
                            "duration_ms": round(elapsed * 1000, 3),
                            "reason": reason,
                            "account_id": getattr(request, "account_id", ""),
                            "reservation_id": reservation_id,
                            "replayed": replayed,
                            "caller": auth.current_caller(),
                        }
                    },
                )
            if res_token is not None:
                RESERVATION_ID.reset(res_token)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=(
            _tolerant(req_cls, limits.BATCH_BYTES_MAX, "BATCH_BYTES_MAX")
            if name == "SubmitBatch"
            else _tolerant(req_cls, message_bytes_max)
        ),
        response_serializer=resp_cls.SerializeToString,
    )


StreamImpl = Callable[[Any, Any], AsyncIterator[Any]]


def _stream_handler(
    name: str, impl: StreamImpl, req_cls: type[Any], resp_cls: type[Any], message_bytes_max: int
) -> grpc.RpcMethodHandler[Any, Any]:
    """A server-streaming RPC: the same status mapping, metrics and log line as a
    unary one (logged when the stream ends). No server deadline: a stream lasts
    as long as its consumer reads (its connection's age limit still applies)."""
    started = metrics.GRPC_STARTED.labels("server_stream", SERVICE, name)
    latency = metrics.GRPC_HANDLING_SECONDS.labels("server_stream", SERVICE, name)
    received = metrics.GRPC_MSG_RECEIVED.labels("server_stream", SERVICE, name)
    sent = metrics.GRPC_MSG_SENT.labels("server_stream", SERVICE, name)

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        t0 = time.perf_counter()
        started.inc()
        received.inc()
        code = grpc.StatusCode.OK
        reason = ""
        try:
            if isinstance(request, _Undecodable):
                raise errors.InvalidArgument([FieldViolation("request", request.describe(req_cls))])
            async for item in impl(request, context):
                sent.inc()
                yield item
        except errors.LedgerError as exc:
            code, message, trailing = status.to_status(exc)
            reason = exc.reason
            await context.abort(code, message, trailing_metadata=trailing)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code, reason = grpc.StatusCode.INTERNAL, "INTERNAL"
            log.exception("%s failed with an internal error", name)
            err = errors.LedgerError("internal error; it has been logged")
            c, message, trailing = status.to_status(err)
            await context.abort(c, message, trailing_metadata=trailing)
        finally:
            elapsed = time.perf_counter() - t0
            latency.observe(elapsed)
            metrics.GRPC_HANDLED.labels(
                "server_stream", SERVICE, name, metrics.grpc_code_label(code.name)
            ).inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "rpc",
                    extra={
                        "rpc": {
                            "method": name,
                            "request_id": REQUEST_ID.get(),
                            "code": code.name,
                            "duration_ms": round(elapsed * 1000, 3),
                            "reason": reason,
                            "account_id": getattr(request, "account_id", ""),
                            "reservation_id": "",
                            "replayed": False,
                            "caller": auth.current_caller(),
                        }
                    },
                )

    def serialize(message: Any) -> bytes:
        # Messages shared by many streams come serialized already (LedgerServicer._streamed).
        return message if isinstance(message, bytes) else bytes(resp_cls.SerializeToString(message))

    return grpc.unary_stream_rpc_method_handler(
        handle,
        request_deserializer=_tolerant(req_cls, message_bytes_max),
        response_serializer=serialize,
    )


def ledger_handler(
    servicer: LedgerServicer,
    unary_deadline_s: float = ServerSettings.unary_deadline_s,
    message_bytes_max: int = limits.MESSAGE_BYTES_MAX,
) -> grpc.GenericRpcHandler:
    handlers = {
        name: _handler(name, impl, req, resp, unary_deadline_s, message_bytes_max)
        for name, (impl, req, resp) in servicer.methods().items()
    }
    for name, (simpl, req, resp) in servicer.streams().items():
        handlers[name] = _stream_handler(name, simpl, req, resp, message_bytes_max)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def build_server(
    servicer: LedgerServicer,
    settings: ServerSettings,
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
) -> tuple[grpc.aio.Server, Any]:
    """The server (not started) and its health servicer. Every call takes a slot
    first (ledger.transport.slots, outermost); grpc.health.v1 is registered
    behind ledger.transport.door.HealthDoor (anonymous callers' limits)."""
    slots = SlotInterceptor(settings.door, settings.client_certificates)
    server = grpc.aio.server(
        interceptors=(slots, *interceptors),
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.concurrent_rpcs_max,
    )
    server.add_generic_rpc_handlers(
        (ledger_handler(servicer, settings.unary_deadline_s, settings.message_bytes_max),)
    )
    health_servicer = health.aio.HealthServicer()
    HealthDoor(settings.door).add_health(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server, health_servicer


def build_health_server(
    health_servicer: Any, settings: ServerSettings, listen: str
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with grpc.health.v1 only (no LedgerService, no reflection),
    for probes that cannot speak TLS (Kubernetes' native gRPC probes), and its port."""
    server = grpc.aio.server(
        interceptors=(SlotInterceptor(settings.door),),
        options=server_options(settings),
        maximum_concurrent_rpcs=256,
    )
    HealthDoor(settings.door).add_health(health_servicer, server)
    return server, server.add_insecure_port(listen)


async def set_health(health_servicer: Any, serving: bool) -> None:
    state = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, state)
    metrics.HEALTH_SERVING.set(1 if serving else 0)
