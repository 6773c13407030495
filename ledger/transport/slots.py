"""Call slots: how many calls and streams one connection, one peer and all
anonymous peers may hold in flight, for every RPC (docs/security.md).

gRPC's own cap (`maximum_concurrent_rpcs`) is one pool for the whole server:
whoever fills it locks everyone else out ("Concurrent RPC limit exceeded!").
`SlotInterceptor`, the outermost interceptor, takes a slot for each call as
soon as its headers arrive and refuses a call past a limit at once with
RESOURCE_EXHAUSTED `TOO_MANY_CONCURRENT_CALLS` (RetryInfo, the limit named in
the message and in ErrorInfo metadata `limit`), counted by
`ledger_call_limit_refusals_total{limit}`. The slot is given back when the
call ends, however it ends.

Who a "peer" is *(choice)*: the caller the call's bearer token names (checked
on the headers by ledger.transport.auth), else the verified client
certificate's identities, else the source address. Identities first, because
behind a load balancer, a NAT or a mesh sidecar every caller shares one
address, and an address limit would let one of them lock the others out;
addresses only for what has no identity (health probes, and every call when
the server has no caller file). Those address-only calls also share one
pool, `anonymous_calls_max`, so that many addresses (a botnet, an IPv6
prefix) cannot fill the server either. `x-forwarded-for` is never read: a
client writes it. A connection is gRPC's peer string (address and port).

Every unary-request call (unary, and server-streaming such as Health/Watch
or WatchTransactions) is turned into its request-streaming form here, so that
the slot is taken on the headers and the one request message is read within
`body_wait_s`, whoever sent the headers: a caller with a valid token cannot
pin slots by never sending a body (DEADLINE_EXCEEDED after the wait).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ledger.domain import errors
from ledger.observability import metrics
from ledger.observability.context import REQUEST_ID
from ledger.transport import auth, door
from ledger.transport.calls import request_id_of
from ledger.transport.door import DoorLimits, Handler, peer_host, too_many

#: Handlers remembered per method (the auth interceptor hands out a few per
#: method: the plain one, the weighed one, the certificate one, refusals).
_HANDLERS_PER_METHOD_MAX = 8

# (connection, peer, anonymous): what a call holds, to give back.
Held = tuple[str, str, bool]


class Slots:
    """Calls in flight per connection, per peer and of anonymous peers in all.
    Entries at zero are removed: the maps hold at most one entry per call in flight."""

    def __init__(self, limits: DoorLimits) -> None:
        self._limits = limits
        self._by_connection: dict[str, int] = {}
        self._by_peer: dict[str, int] = {}
        self.anonymous = 0

    def enter(self, connection: str, peer: str, anonymous: bool) -> errors.LedgerError | None:
        """Counts a new call, or returns its refusal (nothing counted then)."""
        cap = self._limits
        on_connection = self._by_connection.get(connection, 0)
        if on_connection >= cap.calls_per_connection_max:
            return too_many(
                "CALLS_PER_CONNECTION_MAX",
                cap.calls_per_connection_max,
                f"{on_connection} calls are in flight on this connection",
            )
        of_peer = self._by_peer.get(peer, 0)
        if of_peer >= cap.calls_per_peer_max:
            who = peer.partition(":")[0]
            return too_many(
                "CALLS_PER_PEER_MAX",
                cap.calls_per_peer_max,
                f"{of_peer} calls are in flight from this {_WHO[who]}",
            )
        if anonymous and self.anonymous >= cap.anonymous_calls_max:
            return too_many(
                "ANONYMOUS_CALLS_MAX",
                cap.anonymous_calls_max,
                f"{self.anonymous} calls of callers known only by their address are in flight",
            )
        self._by_connection[connection] = on_connection + 1
        self._by_peer[peer] = of_peer + 1
        if anonymous:
            self.anonymous += 1
        return None

    def leave(self, connection: str, peer: str, anonymous: bool) -> None:
        _down(self._by_connection, connection)
        _down(self._by_peer, peer)
        if anonymous:
            self.anonymous -= 1

    def in_flight(self) -> int:
        return sum(self._by_peer.values())


_WHO = {"caller": "caller", "cert": "client certificate", "addr": "address"}


def _down(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class SlotInterceptor(grpc.aio.ServerInterceptor):
    """Takes a call slot on the headers of every call (see the module doc).

    Outermost, so that it wraps what the other interceptors decided: the
    caller a token named is known (ledger.transport.auth.current_caller) when
    the wrapped handler starts, in the same task."""

    def __init__(self, limits: DoorLimits, client_certificates: bool = False) -> None:
        self.slots = Slots(limits)
        self._limits = limits
        # Without mutual TLS no call carries a certificate: skip looking.
        self._client_certificates = client_certificates
        self._wrapped: dict[str, dict[int, tuple[Handler, Handler]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or door.is_refusal(handler):
            return handler  # a refusal ends at once: nothing to hold
        per_method = self._wrapped.setdefault(details.method, {})
        hit = per_method.get(id(handler))
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self._wrap(handler, details.method)
        if len(per_method) >= _HANDLERS_PER_METHOD_MAX:
            per_method.clear()
        per_method[id(handler)] = (handler, wrapped)
        return wrapped

    def _peer(self, context: Any) -> Held:
        connection = context.peer()
        caller = auth.current_caller()
        if caller:
            return connection, "caller:" + caller, False
        if self._client_certificates:
            identities = auth.certificate_identities(context)
            if identities:
                return connection, "cert:" + ",".join(sorted(identities)), False
        return connection, "addr:" + peer_host(connection), True

    def _wrap(self, handler: Handler, method: str) -> Handler:
        leave, wait_s = self.slots.leave, self._limits.body_wait_s
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        rpc = auth.rpc_labels(handler, method)

        async def enter(context: Any) -> Held:
            held = self._peer(context)
            refused = self.slots.enter(*held)
            if refused is not None:
                # Counted like every answer (and by limit), not logged one by one:
                # a flood of refusals must not turn into a flood of log lines.
                metrics.GRPC_STARTED.labels(*rpc).inc()
                metrics.GRPC_HANDLED.labels(*rpc, "ResourceExhausted").inc()
                REQUEST_ID.set(request_id_of(context.invocation_metadata()))
                await door.abort(context, refused)
            return held

        async def body(context: Any) -> Any:
            try:
                return await door.read_body(context, wait_s)
            except errors.LedgerError as exc:
                await door.abort(context, exc)

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary(_requests: Any, context: Any) -> Any:
                held = await enter(context)
                try:
                    return await inner_uu(await body(context), context)
                finally:
                    leave(*held)

            return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def server_stream(_requests: Any, context: Any) -> AsyncIterator[Any]:
                held = await enter(context)
                try:
                    async for item in door.items(inner_us(await body(context), context)):
                        yield item
                finally:
                    leave(*held)

            return grpc.stream_stream_rpc_method_handler(server_stream, deserialize, serialize)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def client_stream(requests: Any, context: Any) -> Any:
                held = await enter(context)
                try:
                    return await inner_su(requests, context)
                finally:
                    leave(*held)

            return grpc.stream_unary_rpc_method_handler(client_stream, deserialize, serialize)
        inner_ss = handler.stream_stream
        if inner_ss is None:
            raise errors.InvariantViolation("a method handler without a behaviour")

        async def bidi_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            held = await enter(context)
            try:
                async for item in door.items(inner_ss(requests, context)):
                    yield item
            finally:
                leave(*held)

        return grpc.stream_stream_rpc_method_handler(bidi_stream, deserialize, serialize)
