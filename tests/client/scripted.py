"""A real grpc.aio server speaking creditledger.v1 whose answers a test scripts.

The client's retry policy is about what happens on the wire (which codes it
retries, which key it sends, how long it keeps trying), so it is tested
against a real server that fails on cue rather than against mocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from creditledger.v1 import ledger_pb2 as pb

SERVICE = "creditledger.v1.LedgerService"


@dataclass
class Failure:
    """Abort an attempt with this code (after an optional stall, to provoke deadlines)."""

    code: grpc.StatusCode
    stall_s: float = 0.0
    #: Trailing metadata of the failure (a grpc-status-details-bin, an x-request-id).
    trailing: tuple[tuple[str, str | bytes], ...] = ()


@dataclass
class Script:
    """Per method: the failures to give, in order, before answering normally."""

    failures: list[Failure] = field(default_factory=list)
    replayed: bool = False
    calls: list[tuple[Any, dict[str, str]]] = field(default_factory=list)
    #: loop.time() of each call's arrival, to check the pauses between attempts.
    arrivals: list[float] = field(default_factory=list)


def _reservation(request: Any, state: pb.Reservation.State.ValueType) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=getattr(request, "reservation_id", "") or "res-1",
        account_id=getattr(request, "account_id", "acct"),
        asset=getattr(request, "asset", "crm_credits") or "crm_credits",
        amount=getattr(request, "amount", 0),
        remaining=getattr(request, "amount", 0) if state == pb.Reservation.STATE_OPEN else 0,
        state=state,
    )


RESPONSES: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "Charge": (
        pb.ChargeRequest,
        lambda r: pb.ChargeResponse(reservation=_reservation(r, pb.Reservation.STATE_CLOSED)),
    ),
    "Reserve": (
        pb.ReserveRequest,
        lambda r: pb.ReserveResponse(reservation=_reservation(r, pb.Reservation.STATE_OPEN)),
    ),
    "Settle": (
        pb.SettleRequest,
        lambda r: pb.SettleResponse(reservation=_reservation(r, pb.Reservation.STATE_CLOSED)),
    ),
    "Release": (
        pb.ReleaseRequest,
        lambda r: pb.ReleaseResponse(reservation=_reservation(r, pb.Reservation.STATE_CLOSED)),
    ),
    "GetAccount": (
        pb.GetAccountRequest,
        lambda r: pb.GetAccountResponse(account=pb.Account(account_id=r.account_id)),
    ),
}


class ScriptedServer:
    """Serves the methods of RESPONSES on 127.0.0.1; `scripts[method]` decides each answer."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.scripts: dict[str, Script] = {name: Script() for name in RESPONSES}
        self._server = grpc.aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                self._handler(name, respond),
                request_deserializer=request_type.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
            for name, (request_type, respond) in RESPONSES.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = (
            self._server.add_insecure_port("127.0.0.1:0")
            if credentials is None
            else self._server.add_secure_port("127.0.0.1:0", credentials)
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _handler(
        self, name: str, respond: Callable[[Any], Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            script = self.scripts[name]
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            script.calls.append((request, metadata))
            script.arrivals.append(asyncio.get_running_loop().time())
            if script.failures:
                failure = script.failures.pop(0)
                if failure.stall_s:
                    await asyncio.sleep(failure.stall_s)
                await context.abort(
                    failure.code,
                    f"scripted {failure.code.name}",
                    trailing_metadata=failure.trailing,
                )
            if script.replayed:
                context.set_trailing_metadata((("idempotent-replayed", "true"),))
            return respond(request)

        return handle

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(grace=None)
