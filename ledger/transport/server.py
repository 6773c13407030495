"""The grpc.aio server: LedgerService with status mapping, metrics and
request logs, plus grpc.health.v1 and server reflection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger.domain import errors, limits
from ledger.domain.errors import FieldViolation
from ledger.observability import metrics
from ledger.transport import auth, status
from ledger.transport.servicer import LedgerServicer

log = logging.getLogger("ledger.rpc")

SERVICE = pb.DESCRIPTOR.services_by_name["LedgerService"].full_name
HEALTH_SERVICES = ("", SERVICE)


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    message_bytes_max: int = limits.MESSAGE_BYTES_MAX
    concurrent_streams_max: int = 256
    concurrent_rpcs_max: int = 4096
    drain_s: float = 10.0
    # Front processes of one `serve --fronts N` share the port (SO_REUSEPORT).
    reuse_port: bool = False


class _Undecodable:
    """Stands for a request whose bytes did not parse; answered INVALID_ARGUMENT."""

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(cls: type[Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # a malformed message is bad input, never INTERNAL
            return _Undecodable(type(exc).__name__)

    return deserialize


Impl = Callable[[Any, Any], Awaitable[tuple[Any, bool]]]


def _handler(
    name: str, impl: Impl, req_cls: type[Any], resp_cls: type[Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    started = metrics.GRPC_STARTED.labels("unary", SERVICE, name)
    latency = metrics.GRPC_HANDLING_SECONDS.labels("unary", SERVICE, name)
    handled = {
        code: metrics.GRPC_HANDLED.labels("unary", SERVICE, name, code.name)
        for code in grpc.StatusCode
    }

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        t0 = time.perf_counter()
        started.inc()
        code = grpc.StatusCode.OK
        reason = ""
        replayed = False
        try:
            if isinstance(request, _Undecodable):
                raise errors.InvalidArgument(
                    [FieldViolation("request", f"not a valid {req_cls.__name__} ({request.error})")]
                )
            response, replayed = await impl(request, context)
            if replayed:
                context.set_trailing_metadata(((status.REPLAYED_KEY, "true"),))
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
            latency.observe(elapsed)
            handled[code].inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "rpc",
                    extra={
                        "rpc": {
                            "method": name,
                            "code": code.name,
                            "duration_ms": round(elapsed * 1000, 3),
                            "reason": reason,
                            "account_id": getattr(request, "account_id", ""),
                            "replayed": replayed,
                            "caller": auth.current_caller(),
                        }
                    },
                )
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=_tolerant(req_cls),
        response_serializer=resp_cls.SerializeToString,
    )


def ledger_handler(servicer: LedgerServicer) -> grpc.GenericRpcHandler:
    handlers = {
        name: _handler(name, impl, req, resp)
        for name, (impl, req, resp) in servicer.methods().items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def build_server(
    servicer: LedgerServicer,
    settings: ServerSettings,
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
) -> tuple[grpc.aio.Server, Any]:
    """The server (not started) and its health servicer."""
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.message_bytes_max),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.max_concurrent_streams", settings.concurrent_streams_max),
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ],
        maximum_concurrent_rpcs=settings.concurrent_rpcs_max,
    )
    server.add_generic_rpc_handlers((ledger_handler(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server, health_servicer


async def set_health(health_servicer: Any, serving: bool) -> None:
    state = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, state)
    metrics.HEALTH_SERVING.set(1 if serving else 0)
