"""Authentication at the edge: TLS credentials, and the interceptor that turns
a bearer token or a client certificate into the caller's `Access`.

With no caller file there is no interceptor at all: every call is the local
caller (ledger.domain.access.LOCAL), at no cost per call. With one, every
call but grpc.health.v1 must present a credential the file lists:

- `authorization: Bearer <token>` metadata, hashed and looked up by its
  digest (ledger.security.callers.CallerBook.by_token), on the call's headers
  alone: an unknown token is refused before the body is read;
- else, under mutual TLS, the client certificate's typed identities
  (`uri:`, `dns:`, `email:` SAN entries, or `cn:` when it has no SAN), as
  gRPC verified them, checked before the body is read (ledger.transport.door).

Then the caller's token bucket is charged (RATE_LIMITED with RetryInfo when
empty), and the caller's Access is put in a context variable for the
servicer (`current_access`). Failed credentials are charged to the peer's
address (AUTH_FAILURES_PER_S). Permissions and account scope are decided by
the service (ledger.service.ledger), not here.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, cast

import grpc

from ledger.domain import errors
from ledger.domain.access import Access
from ledger.observability import metrics
from ledger.observability.context import REQUEST_ID
from ledger.security import callers as caller_file
from ledger.security.callers import Caller, CallerBook, CallerFileError
from ledger.security.ratelimit import PEERS_TRACKED_MAX, Rate, RateLimiter, weight
from ledger.transport import door, status
from ledger.transport.door import HEALTH_PREFIX, DoorLimits
from ledger.transport.servicer import local_access

log = logging.getLogger("ledger.auth")

# Generic only in the type stubs, so a string for the interpreter.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

_BEARER = "bearer "

_current: contextvars.ContextVar[Access | None] = contextvars.ContextVar(
    "ledger_access", default=None
)
# The caller's id and rate, while its request's weight is still to be charged.
_charge: contextvars.ContextVar[tuple[str, Rate] | None] = contextvars.ContextVar(
    "ledger_charge", default=None
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
        """Errors: ValueError naming the file and what is wrong with it.

        Each file is read once, and those very bytes are both checked and handed
        to gRPC: a write between a check by path and a second read could
        otherwise load a pair that was never checked."""
        f = self.files
        try:
            cert, key = f.cert.read_bytes(), f.key.read_bytes()
            ca = f.client_ca.read_bytes() if f.client_ca is not None else None
            _check_pair(cert, key, ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
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


def _check_pair(cert: bytes, key: bytes, ca: bytes | None) -> None:
    """The key matches the certificate, and the CA bundle parses: checked by the
    ssl module on these bytes (through anonymous in-memory files, so the key
    never touches a disk). Errors: ssl.SSLError, OSError, ValueError."""
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with _memory_file(cert) as cert_path, _memory_file(key) as key_path:
        check.load_cert_chain(cert_path, key_path)
    if ca is not None:
        check.load_verify_locations(cadata=ca.decode("ascii", "replace"))


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path whose contents are `data`: a memfd on Linux, else a private temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ledger-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as d:  # pragma: no cover - not Linux
        path = Path(d) / "pem"
        path.write_bytes(data)
        path.chmod(0o600)
        yield str(path)


# ---------------------------------------------------------------- the interceptor

#: Failed credentials a peer address may present per second (and in a burst)
#: before its refusals turn from UNAUTHENTICATED into RATE_LIMITED and stop
#: being logged one by one (docs/security.md, "Unauthenticated callers").
AUTH_FAILURES_PER_S = 10.0
AUTH_FAILURES_BURST = 50
_FAILURE_RATE = Rate(AUTH_FAILURES_PER_S, AUTH_FAILURES_BURST)

#: Certificate identities, by the auth-context property gRPC fills from the
#: verified client certificate, and the type prefix the caller file uses.
_TYPED_SANS = (("peer_uri", "uri"), ("peer_dns", "dns"), ("peer_email", "email"))


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return str(value)
    return None


def certificate_identities(context: Any) -> list[str]:
    """The verified client certificate's identities, typed as the caller file writes
    them: `uri:...`, `dns:...`, `email:...` for its SAN entries, and `cn:...` for its
    subject CN only when it has no SAN at all (RFC 6125's rule for host names)."""
    auth = context.auth_context()
    out = [
        caller_file.typed_identity(kind, n.decode("utf-8", "replace"))
        for prop, kind in _TYPED_SANS
        for n in auth.get(prop, ())
    ]
    if not auth.get("x509_subject_alternative_name"):
        out += [
            caller_file.typed_identity("cn", n.decode("utf-8", "replace"))
            for n in auth.get("x509_common_name", ())
        ]
    return out


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits a call only with a credential the caller file lists, within its rate.

    Decided on the call's headers, before its body is read: a bearer token from
    the metadata is looked up here, and the call is refused at once when it is
    unknown; a call without one is turned into its request-streaming form
    (ledger.transport.door.body_first), which checks the client certificate
    first and only then reads the body, within DoorLimits.body_wait_s.
    """

    def __init__(
        self,
        source: CallerSource,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.perf_counter,
        limits: DoorLimits | None = None,
        client_certificates: bool = True,
    ) -> None:
        self._source = source
        self._limiter = limiter or RateLimiter()
        self._failures = RateLimiter(keys_max=PEERS_TRACKED_MAX)
        self._clock = clock
        self._limits = limits or DoorLimits()
        # Without mutual TLS no call can carry a certificate: one without a
        # token is refused at once, by a handler made once per method.
        self._client_certificates = client_certificates
        self._methods: dict[
            str, tuple[Handler, Handler, tuple[str, str, str], Handler, Handler]
        ] = {}

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
        cached = self._methods.get(method)
        if cached is None or cached[0] is not handler:
            weighed = self._weighed(handler)
            rpc = rpc_labels(handler, method)
            by_certificate = (
                self._by_certificate(weighed, method)
                if self._client_certificates
                else self._refusal(rpc, None, _MISSING)
            )
            cached = (
                handler,
                by_certificate,
                rpc,
                weighed,
                self._refusal(rpc, None, _NOT_ACCEPTED),
            )
            self._methods[method] = cached
        authorization = _authorization(details.invocation_metadata)
        if authorization is None:
            return cached[1]
        scheme = authorization[: len(_BEARER)].lower()
        token = authorization[len(_BEARER) :].strip()
        caller = self._source.book.by_token(token) if scheme == _BEARER else None
        if caller is None:
            return cached[4]
        wait_s = self._limiter.take(caller.id, caller.rate)
        if wait_s > 0:
            return self._refusal(cached[2], caller.access, _over_rate(caller, wait_s))
        # Each RPC runs in a task of its own, which the behaviour shares with
        # its interceptors: the variables set here are this call's only.
        _current.set(caller.access)
        if caller.rate.limited:
            _charge.set((caller.id, caller.rate))
            return cached[3]
        return handler

    def _weighed(self, handler: Handler) -> Handler:
        """`handler`, charging a limited caller for its request's weight beyond the
        one unit the door took (ledger.security.ratelimit.weight), once the body is read."""
        inner = handler.unary_unary
        if inner is None:
            return handler
        limiter = self._limiter

        async def weighed(request: Any, context: Any) -> Any:
            charge = _charge.get()
            if charge is not None:
                extra = request_weight(request) - 1
                if extra > 0:
                    caller_id, rate = charge
                    wait_s = limiter.take(caller_id, rate, extra)
                    if wait_s > 0:
                        await door.abort(
                            context,
                            errors.RateLimited(
                                f"caller {caller_id} is over its rate limit of {rate.per_s:g}"
                                f" weight units/s (this request weighs {extra + 1});"
                                f" retry in {wait_s * 1000:.0f} ms",
                                wait_s,
                            ),
                        )
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            weighed, handler.request_deserializer, handler.response_serializer
        )

    def _identify(self, context: Any) -> Caller:
        """The caller a verified client certificate names. Errors: Unauthenticated."""
        identities = certificate_identities(context)
        if not identities:
            raise errors.Unauthenticated(
                "missing credentials: send `authorization: Bearer <token>` metadata"
                " or a client certificate"
            )
        caller = self._source.book.by_identities(identities)
        if caller is None:
            raise _not_accepted()
        return caller

    def _admit(self, context: Any) -> tuple[Access | None, errors.LedgerError | None]:
        """(the caller's Access, None), or (the caller's Access or None, the refusal)."""
        try:
            caller = self._identify(context)
        except errors.Unauthenticated as exc:
            return None, exc
        wait_s = self._limiter.take(caller.id, caller.rate)
        if wait_s > 0:
            return caller.access, _over_rate(caller, wait_s)
        if caller.rate.limited:
            _charge.set((caller.id, caller.rate))
        return caller.access, None

    def _refusal(
        self, rpc: tuple[str, str, str], access: Access | None, exc: errors.LedgerError
    ) -> Handler:
        clock = self._clock

        async def refuse(_requests: Any, context: Any) -> None:
            await self._refuse(context, rpc, access, exc, clock())

        return door.mark_refusal(grpc.stream_unary_rpc_method_handler(refuse))

    async def _refuse(
        self,
        context: Any,
        rpc: tuple[str, str, str],
        access: Access | None,
        exc: errors.LedgerError,
        t0: float,
    ) -> None:
        rpc_type, service, name = rpc
        quiet = False
        if access is None:
            # A failed credential: charged to the peer's address. Past its budget
            # the answer says "slow down" and is counted but not logged per call.
            wait_s = self._failures.take(door.peer_host(context.peer()), _FAILURE_RATE)
            if wait_s > 0:
                exc = errors.RateLimited(
                    f"too many failed credentials from this address (AUTH_FAILURES_PER_S ="
                    f" {AUTH_FAILURES_PER_S:g}); retry in {wait_s * 1000:.0f} ms",
                    wait_s,
                )
                quiet = True
        metrics.GRPC_STARTED.labels(rpc_type, service, name).inc()
        metrics.GRPC_MSG_RECEIVED.labels(rpc_type, service, name).inc()
        code, message, trailing = _STATIC_STATUS.get(id(exc)) or status.to_status(exc)
        request_id = REQUEST_ID.get()
        if request_id and not any(k == status.REQUEST_ID_KEY for k, _ in trailing):
            # A status made once (ErrorInfo without the id): the trailer still names it.
            trailing = (*trailing, (status.REQUEST_ID_KEY, request_id))
        metrics.GRPC_HANDLED.labels(
            rpc_type, service, name, metrics.grpc_code_label(code.name)
        ).inc()
        metrics.REJECTIONS.labels(name, exc.reason).inc()
        if not quiet and log.isEnabledFor(logging.INFO):
            log.info(
                "rpc",
                extra={
                    "rpc": {
                        "method": name,
                        "request_id": REQUEST_ID.get(),
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

    def _by_certificate(self, handler: Handler, method: str) -> Handler:
        """The handler for calls without a token: the certificate is checked on the
        headers, then the body is read (unary requests) within body_wait_s."""
        admit, refuse, clock = self._admit, self._refuse, self._clock
        rpc = rpc_labels(handler, method)

        async def entry(context: Any) -> None:
            t0 = clock()
            access, refusal = admit(context)
            if refusal is not None or access is None:
                await refuse(context, rpc, access, refusal or errors.Unauthenticated(""), t0)
                raise errors.InvariantViolation("context.abort returned")  # it raises
            _current.set(access)

        if not handler.request_streaming:
            return door.body_first(handler, entry, self._limits.body_wait_s)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                await entry(context)
                return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is None:
            raise errors.InvariantViolation(f"{method} has no behaviour")
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            await entry(context)
            async for item in door.items(inner_ss(requests, context)):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )


def request_weight(request: Any) -> int:
    """A request's rate-limit weight: its legs (a SubmitBatch: its commands, so
    that batching is no way around a caller's rate) and its size (ratelimit.weight)."""
    size = getattr(request, "ByteSize", None)
    units = len(getattr(request, "legs", ())) + len(getattr(request, "commands", ()))
    return weight(units, size() if size is not None else 0)


def _not_accepted() -> errors.Unauthenticated:
    return errors.Unauthenticated("credentials not accepted: unknown token or client certificate")


_NOT_ACCEPTED = _not_accepted()
_MISSING = errors.Unauthenticated(
    "missing credentials: send `authorization: Bearer <token>` metadata or a client certificate"
)
# The refusals that never change, their status made once (by the object's id).
_STATIC_STATUS = {id(e): status.to_status(e) for e in (_NOT_ACCEPTED, _MISSING)}


def _over_rate(caller: Caller, wait_s: float) -> errors.RateLimited:
    return errors.RateLimited(
        f"caller {caller.id} is over its rate limit of {caller.rate.per_s:g} weight units/s;"
        f" retry in {wait_s * 1000:.0f} ms",
        wait_s,
    )


def rpc_labels(handler: Handler, method: str) -> tuple[str, str, str]:
    """(gRPC type, service, method name) for the metrics of a refused call."""
    service, _, name = method.lstrip("/").rpartition("/")
    if not handler.request_streaming:
        kind = "server_stream" if handler.response_streaming else "unary"
    else:
        kind = "bidi_stream" if handler.response_streaming else "client_stream"
    return kind, service, name


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


def build_security(
    callers_file: Path | None, tls: TlsFiles | None, limits: DoorLimits | None = None
) -> Security:
    """Errors: CallerFileError, ValueError (unusable TLS files)."""
    reloader = TlsReloader(tls) if tls is not None else None
    creds = reloader.credentials if reloader is not None else None
    if callers_file is None:
        return Security((), creds, local_access, tls=reloader)
    source = CallerSource(callers_file)
    client_certificates = tls is not None and tls.client_ca is not None
    interceptor = AuthInterceptor(source, limits=limits, client_certificates=client_certificates)
    return Security((interceptor,), creds, current_access, source, reloader, interceptor)
