"""The internal hop to the elected writer: `creditledger.internal.v1.WriterService/Submit`.

Every process that is not the writer forwards its validated domain commands
here; the writer answers each with its outcome. Replicas on other machines
and front processes on this one (issue 19) use this same call. One call
carries many commands: a forwarding client sends whatever queued while its
previous calls were in flight, so the writer pays one gRPC call per batch of
commands rather than per command.

The payload is the serialized domain command (ledger.service.wire), not a
protobuf message: the command was validated at the edge, its caller and its
account scope are fields of it, and any mutating command (a batch of
commands too) travels the same way without a new message per command.

Authentication: a shared secret (`--writer-secret-file`, env
LEDGER_WRITER_SECRET) in `authorization: Bearer` metadata, compared in
constant time. Without a secret the internal port must be a loopback address
(ledger.config refuses anything else). The writer trusts the caller id and
scope a command carries because only holders of the secret can send one.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import grpc

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.model import Result
from ledger.observability import metrics
from ledger.service import wire
from ledger.service.election import Election
from ledger.service.outcomes import Outcome
from ledger.service.tasks import stop_task

log = logging.getLogger("ledger.internal")

SERVICE = "creditledger.internal.v1.WriterService"
METHOD = f"/{SERVICE}/Submit"
# Commands per internal call, and calls in flight per forwarding client.
COMMANDS_PER_CALL_MAX = 512
CALLS_IN_FLIGHT_MAX = 4
MESSAGE_BYTES_MAX = 64 * 1024 * 1024


_PENDING: wire.Outcome = errors.LedgerError("no outcome yet")


def _bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),) if secret else ()


class WriterService:
    """The writer's side: decode, run on the local Writer, encode each outcome."""

    def __init__(self, election: Election, secret: str) -> None:
        self._election = election
        self._expected = f"Bearer {secret}".encode() if secret else b""

    def _authorized(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        if not self._expected:
            return True
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False

    async def submit(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if not self._authorized(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing writer secret")
        try:
            cmds = wire.decode_commands(request)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if len(cmds) > COMMANDS_PER_CALL_MAX:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {COMMANDS_PER_CALL_MAX} commands per call (COMMANDS_PER_CALL_MAX)",
            )
        results: list[wire.Outcome] = []
        waiting: list[tuple[int, asyncio.Future[tuple[Outcome, bool]]]] = []
        for cmd in cmds:
            try:
                cmd.validate()  # again: the writer does not trust its peers' code to be right
                waiting.append((len(results), self._election.enqueue_local(cmd)))
                results.append(_PENDING)
            except errors.LedgerError as exc:
                results.append(exc)
        # Futures, not coroutines: no task per command. They never hold an exception.
        await asyncio.gather(*(future for _, future in waiting))
        for i, future in waiting:
            outcome, replayed = future.result()
            if isinstance(outcome, errors.LedgerError):
                outcome.replayed = replayed
                results[i] = outcome
            else:
                results[i] = (outcome, replayed)
        return wire.encode_outcomes(results)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE, {"Submit": grpc.unary_unary_rpc_method_handler(self.submit)}
        )


def build_internal_server(service: WriterService, listen: str) -> tuple[grpc.aio.Server, int]:
    """The internal server (not started) and the port it bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port(listen)
    return server, port


class ForwardingClient:
    """A RemoteSink: sends commands to the writer at `address`, many per call."""

    def __init__(self, address: str, secret: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self._timeout_s = timeout_s
        self._metadata = _bearer(secret)
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
                ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
                # A writer restarted at the same address is found again within
                # a few hundred ms, not after gRPC's default backoff of 1-120 s.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            METHOD
        )
        self._queue: list[tuple[c.MutatingCommand, asyncio.Future[wire.Outcome]]] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(CALLS_IN_FLIGHT_MAX)
        self._calls: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-forward")

    async def submit(self, cmd: c.MutatingCommand) -> tuple[Result, bool]:
        future: asyncio.Future[wire.Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((cmd, future))
        self._wakeup.set()
        outcome = await future
        if isinstance(outcome, errors.LedgerError):
            raise outcome
        return outcome

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._slots.acquire()
                batch = self._queue[:COMMANDS_PER_CALL_MAX]
                del self._queue[:COMMANDS_PER_CALL_MAX]
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    def _gone(self, detail: str) -> errors.WriterUnavailable:
        return errors.WriterUnavailable(
            f"the writer at {self.address} {detail}; retry with the same idempotency key"
            " (a retry replays the first outcome if it was recorded)",
            {"cause": detail},
        )

    async def _send(
        self, batch: list[tuple[c.MutatingCommand, asyncio.Future[wire.Outcome]]]
    ) -> None:
        live = [(cmd, f) for cmd, f in batch if not f.done()]
        try:
            if not live:
                return
            metrics.FORWARD_CALLS.observe(len(live))
            reply = await self._call(
                wire.encode_commands([cmd for cmd, _ in live]),
                timeout=self._timeout_s,
                metadata=self._metadata,
            )
            outcomes = wire.decode_outcomes(reply)
            if len(outcomes) != len(live):
                raise wire.WireError(f"{len(outcomes)} outcomes for {len(live)} commands")
        except grpc.aio.AioRpcError as err:
            unavailable = self._gone(f"did not answer ({err.code().name})")
            metrics.FORWARDED.labels("unavailable").inc(len(live))
            for _, f in live:
                _settle(f, unavailable)
            return
        except asyncio.CancelledError:
            for _, f in live:
                _settle(f, self._gone("went away (the route changed)"))
            raise
        except Exception:
            log.exception("forwarding to %s failed", self.address)
            for _, f in live:
                _settle(f, errors.LedgerError("internal error; it has been logged"))
            return
        finally:
            self._slots.release()
        for (_, f), outcome in zip(live, outcomes, strict=True):
            ok = not isinstance(outcome, errors.LedgerError)
            metrics.FORWARDED.labels("ok" if ok else "error").inc()
            _settle(f, outcome)

    async def close(self) -> None:
        """Stop: what is queued or in flight answers WRITER_UNAVAILABLE."""
        await stop_task(self._task)
        await asyncio.gather(*(stop_task(task) for task in list(self._calls)))
        queued, self._queue = self._queue, []
        for _, f in queued:
            _settle(f, self._gone("is no longer the writer"))
        await self._channel.close()


def _settle(future: asyncio.Future[wire.Outcome], outcome: wire.Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
