"""The door: what a call meets before its request body is read.

gRPC's own unary handling waits for the request message before it runs any
code of ours, so a client that sends headers and never a body holds one of
the server's concurrent-RPC slots for as long as its connection lives. Here a
unary-request handler is turned into its request-streaming form
(`body_first`): our check runs as soon as the headers arrive, with the call's
metadata, peer and TLS identity, and the one request message is then read
within a bounded wait. On the wire nothing changes: clients still send one
message and get one (or a stream) back.

`HealthDoor` applies that to grpc.health.v1 (where it is registered), which
needs no credentials: a
Check or Watch must send its body within `health_body_wait_s`, and a peer
(an IP address) may hold at most `watch_streams_per_peer_max` Watch streams,
the whole server `watch_streams_max`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2_grpc

from ledger.domain import errors
from ledger.observability import metrics
from ledger.transport import status

# Generic only in the type stubs, so a string for the interpreter.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Before = Callable[[Any], Awaitable[None]]

HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class DoorLimits:
    """Limits on what a call may hold before and besides its work (docs/security.md)."""

    #: Seconds a call may take to send its request message once its headers
    #: arrived, whoever it is from (a valid token included).
    body_wait_s: float = 10.0
    #: Calls and streams in flight on one connection (ledger.transport.slots).
    calls_per_connection_max: int = 256
    #: Calls and streams in flight of one peer: an authenticated caller, else
    #: a verified client certificate, else a source address.
    calls_per_peer_max: int = 512
    #: Calls and streams in flight of every peer known only by its address
    #: (health probes; every call when there is no caller file), together.
    anonymous_calls_max: int = 512
    #: The same for grpc.health.v1 calls, which need no credentials.
    health_body_wait_s: float = 5.0
    #: Health/Watch streams one peer address may hold open at once.
    watch_streams_per_peer_max: int = 8
    #: Health/Watch streams the whole server holds open at once.
    watch_streams_max: int = 256


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string: "ipv4:10.0.0.7:5123" -> "10.0.0.7",
    "ipv6:[::1]:5123" -> "::1"; anything else (unix sockets) is returned whole."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


async def abort(context: Any, exc: errors.LedgerError) -> None:
    """Ends the call with `exc`'s status and details (raises, like context.abort)."""
    code, message, trailing = status.to_status(exc)
    await context.abort(code, message, trailing_metadata=trailing)


async def read_body(context: Any, wait_s: float) -> Any:
    """The call's one request message, read within `wait_s`.
    Errors: DeadlineExceeded (no body in time), InvalidArgument (no body at all)."""
    try:
        async with asyncio.timeout(wait_s):
            message = await context.read()
    except TimeoutError:
        raise errors.DeadlineExceeded(
            f"no request message within {wait_s:g} s of the call's headers (BODY_WAIT_S)"
        ) from None
    if message is grpc.aio.EOF:
        raise errors.InvalidArgument(
            [errors.FieldViolation("request", "the call ended without a request message")]
        )
    return message


def body_first(handler: Handler, before: Before, wait_s: float) -> Handler:
    """`handler` (unary request) as a request-streaming handler: `before(context)`
    runs on the headers alone (it may abort), then the body is read within `wait_s`."""

    async def first(context: Any) -> Any:
        await before(context)
        try:
            return await read_body(context, wait_s)
        except errors.LedgerError as exc:
            await abort(context, exc)

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def stream_unary(_requests: Any, context: Any) -> Any:
            return await inner_uu(await first(context), context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is None:
        raise errors.InvariantViolation("body_first needs a unary-request handler")
    inner_us = handler.unary_stream

    async def stream_stream(_requests: Any, context: Any) -> AsyncIterator[Any]:
        async for item in items(inner_us(await first(context), context)):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


async def items(result: Any) -> AsyncIterator[Any]:
    """A streaming behaviour's items, whether it is an async generator or writes to context."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    else:
        await result


def refusal(exc: errors.LedgerError, on_refuse: Callable[[Any], None] | None = None) -> Handler:
    """A handler that ends the call with `exc` at once, without reading its body."""

    async def refuse(_requests: Any, context: Any) -> None:
        if on_refuse is not None:
            on_refuse(context)
        await abort(context, exc)

    return mark_refusal(grpc.stream_unary_rpc_method_handler(refuse))


_REFUSAL_MARK = "ledger_door_refusal"


def mark_refusal(handler: Handler) -> Handler:
    """Marks a handler that ends its call at once without reading it, so that
    ledger.transport.slots does not take a slot for it."""
    setattr(handler.stream_unary, _REFUSAL_MARK, True)
    return handler


def is_refusal(handler: Handler) -> bool:
    return bool(getattr(handler.stream_unary, _REFUSAL_MARK, False))


class WatchCounter:
    """Open Health/Watch streams, per peer address and in all."""

    def __init__(self, limits: DoorLimits) -> None:
        self._limits = limits
        self._by_peer: dict[str, int] = {}
        self.total = 0

    def enter(self, peer: str) -> errors.LedgerError | None:
        """Counts a new stream of `peer`, or returns the refusal (nothing counted then)."""
        held = self._by_peer.get(peer, 0)
        cap = self._limits
        if held >= cap.watch_streams_per_peer_max:
            return too_many(
                "WATCH_STREAMS_PER_PEER_MAX",
                cap.watch_streams_per_peer_max,
                f"{held} Health/Watch streams are open from this address",
            )
        if self.total >= cap.watch_streams_max:
            return too_many(
                "WATCH_STREAMS_MAX",
                cap.watch_streams_max,
                f"the server holds {self.total} Health/Watch streams",
            )
        self._by_peer[peer] = held + 1
        self.total += 1
        return None

    def leave(self, peer: str) -> None:
        held = self._by_peer.get(peer, 0) - 1
        if held > 0:
            self._by_peer[peer] = held
        else:
            self._by_peer.pop(peer, None)
        self.total -= 1


class HealthDoor:
    """Bounds what anonymous grpc.health.v1 callers can hold (see the module doc).

    Applied where the health service is registered (`add_health`), not as an
    interceptor, so that LedgerService calls pay nothing for it."""

    def __init__(self, limits: DoorLimits) -> None:
        self._limits = limits
        self.watches = WatchCounter(limits)

    def add_health(self, servicer: Any, server: Any) -> None:
        """grpc.health.v1 on `server`, each method behind the door."""
        capture = _Capture()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, capture)
        for service, handlers in capture.services.items():
            guarded = {name: self.wrap(name, h) for name, h in handlers.items()}
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, guarded),)
            )
            server.add_registered_method_handlers(service, guarded)

    def wrap(self, name: str, handler: Handler) -> Handler:
        if handler.request_streaming:
            return handler
        if name == "Watch":
            return self._watch(handler)
        return body_first(handler, _nothing, self._limits.health_body_wait_s)

    def _watch(self, handler: Handler) -> Handler:
        watches, wait_s = self.watches, self._limits.health_body_wait_s
        inner = handler.unary_stream
        if inner is None:
            raise errors.InvariantViolation("Health/Watch is a server-streaming method")

        async def watch(_requests: Any, context: Any) -> AsyncIterator[Any]:
            peer = peer_host(context.peer())
            refused = watches.enter(peer)
            if refused is not None:
                await abort(context, refused)
            try:
                try:
                    request = await read_body(context, wait_s)
                except errors.LedgerError as exc:
                    await abort(context, exc)
                async for item in items(inner(request, context)):
                    yield item
            finally:
                watches.leave(peer)

        return grpc.stream_stream_rpc_method_handler(
            watch, handler.request_deserializer, handler.response_serializer
        )


#: How long a refused client is told to wait (RetryInfo): slots free as calls end.
SLOT_RETRY_S = 1.0


def too_many(limit: str, value: int, what: str) -> errors.TooManyConcurrentCalls:
    """The refusal of a call past a concurrency limit, naming it (and counted by it)."""
    metrics.CALL_LIMIT_REFUSALS.labels(limit.lower()).inc()
    return errors.TooManyConcurrentCalls(
        f"{what}, the most allowed ({limit} = {value}); retry when some have ended",
        SLOT_RETRY_S,
        {"limit": limit, "limit_value": str(value)},
    )


async def _nothing(_context: Any) -> None:
    return None


class _Capture:
    """Stands for a server to learn the handlers a generated add_*_to_server registers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Handler]] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        return None

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.services[service] = dict(handlers)
