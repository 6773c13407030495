"""Composition root: config -> database -> storage -> service -> transport."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server

from ledger import __version__
from ledger.config import Config, is_loopback
from ledger.listen import bind_problem, describe, split_host_port
from ledger.observability import metrics, tracing
from ledger.security.callers import CallerFileError
from ledger.service.clock import Clock, SystemClock
from ledger.service.election import Election, ElectionSettings, WriterRole
from ledger.service.ledger import Ledger
from ledger.service.retention import IdempotencyRetention
from ledger.service.sweeper import Sweeper, SweeperSettings
from ledger.service.writer import WriterSettings
from ledger.storage.lease import PgLease
from ledger.storage.pool import (
    EmbeddedPostgres,
    PoolSettings,
    create_pool,
    migrate,
    read_endpoint_problem,
    schema_problem,
    wait_for_database,
)
from ledger.storage.postgres import PostgresStore
from ledger.transport.auth import Security, TlsFiles, build_security
from ledger.transport.calls import CallContextInterceptor
from ledger.transport.door import DoorLimits
from ledger.transport.internal import ForwardingClient, WriterService, build_internal_server
from ledger.transport.server import (
    ServerSettings,
    build_health_server,
    build_server,
    set_health,
)
from ledger.transport.servicer import LedgerServicer

log = logging.getLogger("ledger.app")


@dataclass
class Hooks:
    """Extra interceptors and server credentials for embedders and tests.

    The security the configuration asks for (TLS, the caller file) is built
    by App itself (ledger.transport.auth.build_security); these come after
    its interceptors, and credentials given here replace the configured ones.
    """

    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
    server_credentials: grpc.ServerCredentials | None = None
    # Tracing with this provider (tests: an in-memory exporter) instead of the
    # configured one (--otlp-endpoint); App shuts it down on stop.
    tracer_provider: TracerProvider | None = None


# `serve` as a role that may not maintain the partitions warns at start when they
# stay ready for less than this (the alert IdempotencyPartitionsRunningOut's threshold).
_PARTITIONS_AHEAD_WARN_S = 24 * 3600.0


class StartupError(Exception):
    """The configuration cannot serve; the message says why (the CLI exits 2)."""


def _security(cfg: Config) -> Security:
    """Errors: StartupError."""
    problems = cfg.problems()
    if problems:
        raise StartupError("; ".join(problems))
    tls = None
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    try:
        return build_security(cfg.callers_file, tls, _door(cfg))
    except (CallerFileError, ValueError) as exc:
        raise StartupError(str(exc)) from None


def _door(cfg: Config) -> DoorLimits:
    return DoorLimits(
        body_wait_s=cfg.body_wait_s,
        calls_per_connection_max=cfg.calls_per_connection_max,
        calls_per_peer_max=cfg.calls_per_peer_max,
        anonymous_calls_max=cfg.anonymous_calls_max,
        watch_streams_per_peer_max=cfg.watch_streams_per_peer_max,
    )


def server_settings(cfg: Config) -> ServerSettings:
    return ServerSettings(
        listen=cfg.listen,
        drain_s=cfg.drain_s,
        concurrent_rpcs_max=cfg.concurrent_rpcs_max,
        unary_deadline_s=cfg.unary_deadline_s,
        door=_door(cfg),
        client_certificates=cfg.tls_client_ca is not None,
        reuse_port=cfg.reuse_port,
    )


def _check_listen(cfg: Config) -> None:
    """Errors: StartupError naming the flag, the address and why nothing can listen there."""
    for flag, address in (("--listen", cfg.listen), ("--metrics-listen", cfg.metrics_listen)):
        if flag == "--listen" and cfg.reuse_port:
            continue  # a front of `serve --fronts`: its siblings hold it too (the supervisor checked)
        problem = bind_problem(address) if address else None
        if problem is not None:
            raise StartupError(f"{flag} {address}: {problem}")


class App:
    def __init__(
        self, config: Config, clock: Clock | None = None, hooks: Hooks | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.hooks = hooks or Hooks()
        self.port = 0
        self.metrics_port = 0
        self.database_url = config.database_url
        self._embedded: EmbeddedPostgres | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._metrics_server: Any = None
        self._tracer_provider: TracerProvider | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self.security: Security | None = None
        self.read_pool: Any = None

    async def start(self) -> None:
        """Errors: StartupError (before anything is started) for an unusable configuration."""
        cfg = self.config
        self.security = security = _security(cfg)
        _check_listen(cfg)  # before the database: a port in use fails fast, in one line
        metrics.set_build_info(__version__)
        metrics.set_asset_labels(cfg.metrics_asset_labels)
        if not self.database_url:
            self._embedded = EmbeddedPostgres(cfg.data_dir)
            self.database_url = await asyncio.to_thread(self._embedded.start)
            log.info("embedded PostgreSQL running under %s", cfg.data_dir)
        await wait_for_database(self.database_url, cfg.database_wait_s)
        if cfg.migrate_at_start:
            applied = await migrate(self.database_url)
            if applied:
                log.info("migrations applied: %s", ", ".join(applied))
        else:
            problem = await schema_problem(self.database_url)
            if problem is not None:
                await self._stop_embedded()
                raise StartupError(f"not serving: {problem}")
        self.pool = await create_pool(self.database_url, PoolSettings(max_size=cfg.pool_size_max))
        retention = cfg.idempotency_retention()
        self.read_pool = await self._read_pool()
        self.store = PostgresStore(
            self.pool, idempotency_partition=retention.partition, read_pool=self.read_pool
        )
        self.election = self._election(cfg, retention)
        self.ledger = Ledger(
            self.store, self.election, self.clock, timedelta(seconds=cfg.refund_grace_s)
        )
        self._tracer_provider = self.hooks.tracer_provider
        if self._tracer_provider is None and cfg.otlp_endpoint:
            self._tracer_provider = tracing.otlp_provider(
                cfg.otlp_endpoint, cfg.trace_sample_ratio, __version__
            )
        tracer = (
            self._tracer_provider.get_tracer("creditledger.server", __version__)
            if self._tracer_provider is not None
            else None
        )
        self.server, self.health = build_server(
            LedgerServicer(self.ledger, security.authorize),
            server_settings(cfg),
            # Outermost first: the request id and span cover authentication too.
            (CallContextInterceptor(tracer), *security.interceptors, *self.hooks.interceptors),
        )
        credentials = self.hooks.server_credentials or security.server_credentials
        try:
            if credentials is not None:
                self.port = self.server.add_secure_port(cfg.listen, credentials)
            else:
                self.port = self.server.add_insecure_port(cfg.listen)
        except RuntimeError:  # taken since _check_listen: say why, as it does
            await self._close_storage()
            problem = bind_problem(cfg.listen) or "cannot listen there"
            raise StartupError(f"--listen {cfg.listen}: {problem}") from None
        if cfg.metrics_listen:
            host, port = split_host_port(cfg.metrics_listen)
            try:
                self._metrics_server, _ = start_http_server(port, addr=host)
            except OSError as exc:
                await self.server.stop(None)
                await self._close_storage()
                raise StartupError(
                    f"--metrics-listen {cfg.metrics_listen}: {describe(exc)}"
                ) from None
            self.metrics_port = self._metrics_server.server_port
        if cfg.health_listen:
            self._health_server, self.health_port = build_health_server(
                self.health, server_settings(cfg), cfg.health_listen
            )
            await self._health_server.start()
        # Partitions for the keys of the first calls, before there are calls.
        await self._check_partitions(retention.horizon())
        await self.internal_server.start()
        await self.election.start()
        await self.server.start()
        await self._check_health()
        self._tasks.append(
            asyncio.get_running_loop().create_task(self._health_loop(), name="ledger-health")
        )
        log.info(
            "serving creditledger.v1 on port %d (metrics on %s)",
            self.port,
            self.metrics_port or "off",
        )
        self._log_security(security, credentials is not None)

    def _election(self, cfg: Config, retention: IdempotencyRetention) -> Election:
        """The writer role, the lease, and the internal server the others forward to."""
        role = WriterRole(
            self.store,
            self.clock,
            WriterSettings(
                batch_max=cfg.batch_max,
                save_part_commands=cfg.save_part_commands,
                attempt_timeout_s=cfg.batch_timeout_s,
                refund_grace=timedelta(seconds=cfg.refund_grace_s),
                retention=retention,
            ),
        )
        self.sweeper = role.sweeper = Sweeper(
            self.store,
            role,
            self.clock,
            SweeperSettings(
                interval_s=cfg.sweep_interval_s,
                retention=retention,
                maintain_every_s=min(10.0, retention.partition.total_seconds() / 2),
            ),
        )
        secret = cfg.writer_secret
        election = Election(
            PgLease(self.database_url),
            role,
            holder=uuid.uuid4().hex,
            address="",
            connect=lambda address: ForwardingClient(address, secret),
            settings=ElectionSettings(lease_s=cfg.writer_lease_s, eligible=cfg.writer_eligible),
        )
        self.internal_server, self.internal_port = build_internal_server(
            WriterService(election, secret), cfg.internal_listen
        )
        host, _ = split_host_port(cfg.internal_listen)
        election.address = cfg.advertise or f"{host}:{self.internal_port}"
        return election

    async def _check_partitions(self, horizon: timedelta) -> None:
        """Run the first partition maintenance, or, as a role that may not (the
        least-privilege serving role), check that `ledger maintain` keeps them.

        Errors: StartupError when no partition is ready for the keys of the first calls."""
        may = await self.store.check_partition_rights()
        await self.sweeper.maintain_once()
        if may:
            return
        log.info(
            "idempotency partitions: this role may not create or drop them (it does not own"
            " the table); that is `ledger maintain`'s job, run as the owner role (hourly)"
        )
        ahead_s = self.sweeper.partitions_ahead_s(self.clock.now())
        if ahead_s is None or ahead_s < 0:
            await self.server.stop(None)
            if self._health_server is not None:
                await self._health_server.stop(0)
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
            await self._close_storage()
            raise StartupError(
                "not serving: no idempotency partition is ready for keys written now"
                f" (retention + 2 partitions = {horizon}): run `ledger maintain` as the"
                " database owner role"
            )
        if ahead_s < _PARTITIONS_AHEAD_WARN_S:
            log.warning(
                "IDEMPOTENCY PARTITIONS RUN OUT IN %.1f h: writes will answer UNAVAILABLE"
                " then; run `ledger maintain` as the database owner role (hourly)",
                ahead_s / 3600,
            )

    async def _read_pool(self) -> Any:
        """The read endpoint's pool, when one is given and reads there are safe; else None."""
        url = self.config.read_database_url
        if not url:
            return None
        problem = await read_endpoint_problem(self.database_url)
        if problem:
            log.warning(
                "read endpoint not used, reads stay on the primary: %s (a standby could"
                " miss acknowledged writes; docs/operations.md)",
                problem,
            )
            return None
        pool = await create_pool(url, PoolSettings(min_size=1, max_size=self.config.pool_size_max))
        log.info("reads (GetBalance, GetAccount, ListEntries, ...) go to the read endpoint")
        return pool

    def _log_security(self, security: Security, tls: bool) -> None:
        cfg = self.config
        transport = "plaintext"
        if tls:
            transport = "mutual TLS" if cfg.tls_client_ca is not None else "TLS"
        callers = security.callers
        who = (
            f"{len(callers.book.callers)} callers from {callers.path}"
            if callers is not None
            else "no caller file: every call is the local caller, with every right"
        )
        log.info("security: %s; %s", transport, who)
        if not tls and not is_loopback(cfg.listen):
            log.warning("serving plaintext on %s (--insecure)", cfg.listen)

    def reload(self) -> None:
        """SIGHUP: re-read the caller file and TLS files; a bad file keeps the old one."""
        if self.security is None:
            log.info("SIGHUP before the server started: nothing to reload yet")
            return
        log.info("SIGHUP: reloading the caller file and TLS files")
        self.security.reload()

    async def _check_health(self) -> None:
        try:
            async with asyncio.timeout(2.0):
                await self.store.ping()
            serving = True
        except Exception:
            serving = False
        await set_health(self.health, serving and not self._stopping.is_set())
        max_size, size, in_use, waiting = self.store.pool_stats()
        metrics.POOL_MAX_SIZE.set(max_size)
        metrics.POOL_SIZE.set(size)
        metrics.POOL_IN_USE.set(in_use)
        metrics.POOL_WAITING.set(waiting)

    async def _health_loop(self) -> None:
        while True:
            # While the database is marked unreachable every call fails fast until a
            # check passes: check more often then, so a new primary is used at once.
            await asyncio.sleep(1.0 if self.store.reachable else 0.25)
            try:
                await self._check_health()
            except Exception:
                log.exception("health check failed")

    async def _stop_embedded(self) -> None:
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None

    async def _close_storage(self) -> None:
        """Undo a start that failed after the pool was made."""
        await self.pool.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)

    async def stop(self) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight calls finish, then close."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await set_health(self.health, False)
        # Change streams never end by themselves: end them now, their consumers resume elsewhere.
        await self.ledger.stream.close()
        await self.server.stop(self.config.drain_s)
        if self._health_server is not None:
            await self._health_server.stop(0)
        # Then hand the lease over at once (the others forwarded to us while we drained).
        await self.election.stop()
        await self.internal_server.stop(1.0)
        await self.store.close()
        await self.pool.close()
        if self.read_pool is not None:
            await self.read_pool.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._tracer_provider is not None:
            # Flushes the spans still queued (bounded by the exporter's timeout).
            await asyncio.to_thread(self._tracer_provider.shutdown)
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        # Everything built so far (modules, protobuf descriptors, the pool) lives as long
        # as the process: keep it out of the collector's full passes, which otherwise
        # walk all of it again and again under load.
        gc.freeze()
        # A young-generation pass every 50,000 new containers, not 700: a change
        # stream builds thousands of short-lived rows a second, none in a cycle,
        # and the default made the collector 8% of a stream replica's CPU
        # (docs/performance.md, "Change streams served by a replica that is not
        # the writer"). Cycles still go, a little later.
        gc.set_threshold(50_000, 10, 10)
        await done.wait()
        log.info("signal received: draining for up to %.0f s", self.config.drain_s)
        await self.stop()
