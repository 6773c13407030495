"""Authentication at the edge: TLS credentials, and the interceptor that turns
a bearer token or a client certificate into the caller's `Access`.

With no caller file there is no interceptor at all: every call is the local
caller (ledger.domain.access.LOCAL), at no cost per call. With one, every
call but grpc.health.v1 must present a credential the file lists:

- `authorization: Bearer <token>` metadata, hashed and compared in constant
  time with every stored hash (ledger.security.callers.CallerBook.by_token);
- else, under mutual TLS, the client certificate's SAN entries (or its CN
  when it has no SAN), as gRPC verified them.

Then the caller's token bucket is charged (RATE_LIMITED with RetryInfo when
empty), and the caller's Access is put in a context variable for the
servicer (`current_access`). Permissions and account scope are decided by
the service (ledger.service.ledger), not here.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, cast

import grpc

from ledger.domain import errors
from ledger.domain.access import Access
from ledger.observability import metrics
from ledger.security import callers as caller_file
from ledger.security.callers import Caller, CallerBook, CallerFileError
from ledger.security.ratelimit import RateLimiter
from ledger.transport import status
from ledger.transport.servicer import local_access

log = logging.getLogger("ledger.auth")

# Generic only in the type stubs, so a string for the interpreter.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_BEARER = "bearer "

_current: contextvars.ContextVar[Access | None] = contextvars.ContextVar(
    "ledger_access", default=None
)


def current_access(context: Any) -> Access:
    """The Access the interceptor admitted this call as. Errors: Unauthenticated
    (fails closed should the interceptor be missing)."""
    access = _current.get()
    if access is None:
        raise errors.Unauthenticated("this call carries no authenticated caller")
    return access


def current_caller() -> str:
    """The caller id of the running call, for request logs; "" before authentication."""
    access = _current.get()
    return access.caller if access is not None else ""


# ---------------------------------------------------------------- the caller file


class CallerSource:
    """The caller file, reloadable: a bad file keeps the book already loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.book: CallerBook = caller_file.load(path)  # at start a bad file is fatal

    def reload(self) -> bool:
        """Swap in the file as it is now; log and keep the old book if it is bad."""
        try:
            book = caller_file.load(self.path)
        except CallerFileError as exc:
            log.error("caller file not reloaded, keeping the previous one: %s", exc)
            return False
        self.book = book  # one reference swap: a call sees the old book or the new, whole
        log.info("caller file reloaded: %d callers", len(book.callers))
        return True


# ---------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


class TlsReloader:
    """Server TLS credentials whose certificate (and client CA) can be swapped
    without a restart: gRPC asks `_fetch` at every new handshake, and gets a
    new configuration once after `reload()` read good files."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        initial = self._read()
        # The stub says the fetcher returns a configuration; gRPC documents None
        # as "keep the current one", which is what _fetch says most of the time.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=files.client_ca is not None
        )

    def _read(self) -> grpc.ServerCertificateConfiguration:
        """Errors: ValueError naming the file and what is wrong with it."""
        f = self.files
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            check.load_cert_chain(f.cert, f.key)  # the key must match the certificate
            if f.client_ca is not None:
                check.load_verify_locations(cafile=f.client_ca)
            cert, key = f.cert.read_bytes(), f.key.read_bytes()
            ca = f.client_ca.read_bytes() if f.client_ca is not None else None
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"TLS files {f.cert}, {f.key}"
                f"{', ' + str(f.client_ca) if f.client_ca else ''} unusable: {exc}"
            ) from None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def reload(self) -> bool:
        try:
            config = self._read()
        except ValueError as exc:
            log.error("TLS files not reloaded, keeping the previous ones: %s", exc)
            return False
        with self._lock:
            self._pending = config
        log.info("TLS certificate reloaded; new connections use it")
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC core for each handshake, possibly off the event loop thread.
        with self._lock:
            config, self._pending = self._pending, None
        return config


# ---------------------------------------------------------------- the interceptor


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return str(value)
    return None


def certificate_identities(context: Any) -> list[str]:
    """The verified client certificate's SAN entries, or its CN when it has no SAN."""
    auth = context.auth_context()
    names = auth.get("x509_subject_alternative_name") or auth.get("x509_common_name") or []
    return [n.decode("utf-8", "replace") for n in names]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits a call only with a credential the caller file lists, within its rate."""

    def __init__(
        self,
        source: CallerSource,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._source = source
        self._limiter = limiter or RateLimiter()
        self._clock = clock
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    def forget_removed_callers(self) -> None:
        self._limiter.forget_except({c.id for c in self._source.book.callers})

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = details.method
        handler = await continuation(details)
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = self._guard(handler, method)
        self._guarded[method] = (handler, guarded)
        return guarded

    def _identify(self, context: Any) -> Caller:
        """Errors: Unauthenticated."""
        book = self._source.book
        authorization = _authorization(context.invocation_metadata())
        if authorization is not None:
            scheme = authorization[: len(_BEARER)].lower()
            token = authorization[len(_BEARER) :].strip()
            caller = book.by_token(token) if scheme == _BEARER else None
        else:
            identities = certificate_identities(context)
            if not identities:
                raise errors.Unauthenticated(
                    "missing credentials: send `authorization: Bearer <token>` metadata"
                    " or a client certificate"
                )
            caller = book.by_identities(identities)
        if caller is None:
            raise errors.Unauthenticated(
                "credentials not accepted: unknown token or client certificate"
            )
        return caller

    def _admit(
        self, context: Any, weight: int = 1
    ) -> tuple[Access | None, errors.LedgerError | None]:
        """(the caller's Access, None), or (the caller's Access or None, the refusal).
        `weight`: what the call costs of the caller's rate (see _weight)."""
        try:
            caller = self._identify(context)
        except errors.Unauthenticated as exc:
            return None, exc
        wait_s = self._limiter.take(caller.id, caller.rate, weight)
        if wait_s > 0:
            heavy = f" (this call weighs {weight}: one per command)" if weight > 1 else ""
            return caller.access, errors.RateLimited(
                f"caller {caller.id} is over its rate limit of {caller.rate.per_s:g} requests/s"
                f"{heavy}; retry in {wait_s * 1000:.0f} ms",
                wait_s,
            )
        return caller.access, None

    async def _refuse(
        self,
        context: Any,
        rpc: tuple[str, str, str],
        access: Access | None,
        exc: errors.LedgerError,
        t0: float,
    ) -> None:
        rpc_type, service, name = rpc
        metrics.GRPC_STARTED.labels(rpc_type, service, name).inc()
        code, message, trailing = status.to_status(exc)
        metrics.GRPC_HANDLED.labels(rpc_type, service, name, code.name).inc()
        metrics.REJECTIONS.labels(name, exc.reason).inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "rpc",
                extra={
                    "rpc": {
                        "method": name,
                        "code": code.name,
                        "duration_ms": round((self._clock() - t0) * 1000, 3),
                        "reason": exc.reason,
                        "account_id": "",
                        "replayed": False,
                        "caller": access.caller if access is not None else "",
                        "peer": context.peer(),
                    }
                },
            )
        await context.abort(code, message, trailing_metadata=trailing)

    def _guard(self, handler: Handler, method: str) -> Handler:
        admit, refuse, clock = self._admit, self._refuse, self._clock
        service, _, name = method.lstrip("/").rpartition("/")
        rpc = (_rpc_type(handler), service, name)

        async def entry(context: Any, weight: int = 1) -> Access:
            t0 = clock()
            access, refusal = admit(context, weight)
            if refusal is not None or access is None:
                await refuse(context, rpc, access, refusal or errors.Unauthenticated(""), t0)
                raise errors.InvariantViolation("context.abort returned")  # it raises
            return access

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                token = _current.set(await entry(context, _weight(request)))
                try:
                    return await inner_uu(request, context)
                finally:
                    _current.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, entry),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                _current.set(await entry(context))
                return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is None:
            raise errors.InvariantViolation(f"{method} has no behaviour")
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, entry),
            handler.request_deserializer,
            handler.response_serializer,
        )


def _weight(request: Any) -> int:
    """A SubmitBatch costs one request per command, so that batching is no way
    around a caller's rate; every other call costs one."""
    commands = getattr(request, "commands", None)
    return max(1, len(commands)) if commands is not None else 1


def _rpc_type(handler: Handler) -> str:
    if handler.unary_unary is not None:
        return "unary"
    if handler.unary_stream is not None:
        return "server_stream"
    if handler.stream_unary is not None:
        return "client_stream"
    return "bidi_stream"


def _streaming(
    inner: Callable[[Any, Any], Any], entry: Callable[[Any], Awaitable[Access]]
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """Guards a streaming behaviour, whether it is an async generator or writes to context."""

    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        # Each RPC runs in its own task, so the variable needs no reset.
        _current.set(await entry(context))
        result = inner(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        else:
            await result

    return behaviour


# ---------------------------------------------------------------- assembly


@dataclass
class Security:
    """What the composition root wires: interceptors, server credentials, how the
    servicer learns the caller, and what SIGHUP reloads."""

    interceptors: tuple[grpc.aio.ServerInterceptor, ...]
    server_credentials: grpc.ServerCredentials | None
    authorize: Callable[[Any], Access]
    callers: CallerSource | None = None
    tls: TlsReloader | None = None
    interceptor: AuthInterceptor | None = None

    def reload(self) -> None:
        """SIGHUP: re-read the caller file and the TLS files; bad ones keep the old."""
        if self.callers is not None and self.callers.reload() and self.interceptor is not None:
            self.interceptor.forget_removed_callers()
        if self.tls is not None:
            self.tls.reload()


def build_security(callers_file: Path | None, tls: TlsFiles | None) -> Security:
    """Errors: CallerFileError, ValueError (unusable TLS files)."""
    reloader = TlsReloader(tls) if tls is not None else None
    creds = reloader.credentials if reloader is not None else None
    if callers_file is None:
        return Security((), creds, local_access, tls=reloader)
    source = CallerSource(callers_file)
    interceptor = AuthInterceptor(source)
    return Security((interceptor,), creds, current_access, source, reloader, interceptor)
