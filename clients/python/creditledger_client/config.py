"""Connection and retry settings shared by LedgerClient and SyncLedgerClient."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from creditledger_client.errors import REQUEST_ID_HEADER, LedgerError, metadata_pairs

USER_AGENT = "creditledger-client-python/0.2.0"
REPLAYED_TRAILER = "idempotent-replayed"

#: gRPC metadata of one call, as (key, value) pairs; keys in lower case.
CallMetadata = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the channel: server roots, and a client certificate for mutual TLS.

    All None means TLS with the system's root certificates.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    #: Expected server name when it differs from the target host (tests, IP targets).
    server_name_override: str | None = None

    @classmethod
    def from_files(
        cls,
        root_certificates: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        private_key: str | Path | None = None,
        server_name_override: str | None = None,
    ) -> TlsConfig:
        """Reads PEM files; a None path leaves that part unset."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(
            read(root_certificates),
            read(certificate_chain),
            read(private_key),
            server_name_override,
        )


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 keepalive pings, so a dead server or a silent NAT drop is noticed.

    The defaults stay above the server's minimum ping interval: gRPC servers
    close connections that ping more often than they allow (GOAWAY too_many_pings).
    """

    time_ms: int = 60_000
    timeout_ms: int = 20_000
    permit_without_calls: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of one call: only on RETRYABLE_CODES, with full-jitter exponential backoff.

    A call gives up at `max_attempts`, or when the next attempt could not start
    before the call's overall deadline, whichever comes first.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed attempt number `attempt` (1-based): uniform in [0, cap]."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return rng.uniform(0.0, cap)


#: A policy of a single attempt, for callers that retry by themselves.
NO_RETRY = RetryPolicy(max_attempts=1)
DEFAULT_KEEPALIVE = Keepalive()


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a client needs to open its channel and run its calls.

    `timeout_s` bounds one attempt (so a hung connection is given up and retried);
    `total_timeout_s` is the deadline of a whole call, attempts and pauses
    included, when the call does not pass its own `timeout_s` (which then is
    that call's whole deadline).
    A `token` goes out as `authorization: Bearer <token>`: as channel call
    credentials under TLS, and as plain metadata on a plaintext channel (gRPC
    refuses call credentials there), which is only sensible on loopback.
    """

    target: str
    tls: TlsConfig | None = None
    token: str | None = None
    timeout_s: float = 5.0
    total_timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    keepalive: Keepalive | None = DEFAULT_KEEPALIVE
    channel_options: Sequence[tuple[str, Any]] = ()
    metadata: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.total_timeout_s <= 0:
            raise ValueError("timeout_s and total_timeout_s must be > 0")
        if self.retry.max_attempts < 1:
            raise ValueError("retry.max_attempts must be >= 1")

    def options(self) -> list[tuple[str, Any]]:
        """Channel arguments: user agent, keepalive, quick reconnects, then the caller's."""
        opts: list[tuple[str, Any]] = [
            ("grpc.primary_user_agent", USER_AGENT),
            # The client retries by itself with a kept idempotency key; gRPC's
            # transparent retries would not know that policy.
            ("grpc.enable_retries", 0),
            # Reconnect quickly after a server restart instead of backing off for
            # up to two minutes; our own retry loop is what bounds the attempts.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self.keepalive is not None:
            opts += [
                ("grpc.keepalive_time_ms", self.keepalive.time_ms),
                ("grpc.keepalive_timeout_ms", self.keepalive.timeout_ms),
                ("grpc.keepalive_permit_without_calls", int(self.keepalive.permit_without_calls)),
            ]
        if self.tls is not None and self.tls.server_name_override:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        return opts + list(self.channel_options)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Channel credentials for TLS (with the token as call credentials), None for plaintext."""
        if self.tls is None:
            return None
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.tls.root_certificates,
            private_key=self.tls.private_key,
            certificate_chain=self.tls.certificate_chain,
        )
        if self.token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(self.token)
            )
        return creds

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call."""
        md = tuple(self.metadata)
        if self.token and self.tls is None:
            md += (("authorization", f"Bearer {self.token}"),)
        return md


def aio_channel(
    config: ClientConfig, interceptors: Sequence[grpc.aio.UnaryUnaryClientInterceptor]
) -> grpc.aio.Channel:
    """The asyncio channel of a LedgerClient, with the caller's interceptors."""
    creds = config.credentials()
    options = config.options()
    if creds is None:
        return grpc.aio.insecure_channel(
            config.target, options=options, interceptors=list(interceptors) or None
        )
    return grpc.aio.secure_channel(
        config.target, creds, options=options, interceptors=list(interceptors) or None
    )


def sync_channel(
    config: ClientConfig, interceptors: Sequence[grpc.UnaryUnaryClientInterceptor]
) -> grpc.Channel:
    """The blocking channel of a SyncLedgerClient, with the caller's interceptors."""
    creds = config.credentials()
    options = config.options()
    channel = (
        grpc.insecure_channel(config.target, options=options)
        if creds is None
        else grpc.secure_channel(config.target, creds, options=options)
    )
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel


def with_request_id(
    base: CallMetadata, per_call: CallMetadata
) -> tuple[tuple[tuple[str, str], ...], str]:
    """The metadata of one call and its request id.

    The caller's `x-request-id` (in the per-call or the client's metadata) is
    kept; otherwise a UUID4 is made, one per call, the same on every attempt,
    so the server's log lines of all attempts share it.
    """
    metadata = tuple(base) + tuple(per_call)
    sent = next((v for k, v in metadata if k.lower() == REQUEST_ID_HEADER), "")
    if sent:
        return metadata, sent
    request_id = str(uuid.uuid4())
    return (*metadata, (REQUEST_ID_HEADER, request_id)), request_id


class Attempts:
    """The retry bookkeeping of one call: per-attempt timeouts and the pause before the next.

    The call's deadline is its own `timeout_s` when given, else the client's
    `total_timeout_s`; every attempt and every pause fits inside it. Shared by
    the asyncio and the blocking client so both follow one policy.
    """

    def __init__(self, config: ClientConfig, timeout_s: float | None, rng: random.Random) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._config = config
        self._per_attempt_s = config.timeout_s
        total_s = config.total_timeout_s if timeout_s is None else timeout_s
        self._deadline = time.monotonic() + total_s
        self._rng = rng
        self.count = 0

    def next_timeout_s(self) -> float:
        """Starts an attempt; its timeout never runs past the call's overall deadline."""
        self.count += 1
        return max(0.001, min(self._per_attempt_s, self._deadline - time.monotonic()))

    def pause_before_retry_s(self, error: LedgerError) -> float | None:
        """How long to wait before retrying after `error`; None means give up and raise it."""
        if not error.retryable or self.count >= self._config.retry.max_attempts:
            return None
        pause = self._config.retry.backoff_s(self.count, self._rng)
        # The server's RetryInfo is a floor: coming back sooner is refused again.
        if error.retry_delay_s is not None:
            pause = max(pause, error.retry_delay_s)
        # Leave the next attempt a useful slice of time, or it would only fail again.
        if time.monotonic() + pause + 0.01 >= self._deadline:
            return None
        return pause

    def give_up(self, error: LedgerError) -> LedgerError:
        """Notes the request id, and how many attempts were made, on the error that ends
        the call, so a logged traceback names the server's log lines."""
        tried = f"gave up after {self.count} attempts; " if self.count > 1 else ""
        error.add_note(f"creditledger-client: {tried}request id {error.request_id}")
        return error


def replayed_from(trailing: Iterable[Any] | None) -> bool:
    """True when the server marked the answer as a replay of an earlier outcome."""
    return any(
        k == REPLAYED_TRAILER and v in ("true", b"true") for k, v in metadata_pairs(trailing)
    )
