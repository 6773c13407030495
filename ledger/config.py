"""Flags and environment variables -> one frozen Config."""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ledger.service.retention import IdempotencyRetention


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    database_url: str = ""
    read_database_url: str = ""
    data_dir: Path = Path(".ledger-data")
    metrics_listen: str = "127.0.0.1:9464"
    log_level: str = "info"
    log_format: str = "json"
    pool_size_max: int = 10
    batch_max: int = 1024  # a full SubmitBatch (1,000) and its neighbours in one transaction
    # A larger transaction is written in statements of this many commands, each
    # written while the writer applies the next (0: one statement per transaction).
    save_part_commands: int = 128
    batch_timeout_s: float = 2.0
    sweep_interval_s: float = 1.0
    idempotency_retention_days: float = 7.0
    idempotency_refused_retention_days: float = 1.0
    idempotency_partition_s: float = 12 * 3600.0
    refund_grace_s: float = 7 * 86400.0
    drain_s: float = 10.0
    database_wait_s: float = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    callers_file: Path | None = None
    insecure: bool = False
    otlp_endpoint: str = ""
    trace_sample_ratio: float = 1.0
    # Security hardening (docs/security.md): anonymous full access off
    # loopback must be asked for by name; the door's limits.
    allow_anonymous_full_access: bool = False
    concurrent_rpcs_max: int = 4096
    unary_deadline_s: float = 30.0
    watch_streams_per_peer_max: int = 8
    # Calls in flight (ledger.transport.slots): per connection, per peer (a
    # caller, a client certificate, else an address), of address-only peers
    # together; and how long a call may take to send its body after its headers.
    calls_per_connection_max: int = 256
    calls_per_peer_max: int = 512
    anonymous_calls_max: int = 512
    body_wait_s: float = 10.0
    metrics_asset_labels: bool = False
    # Migrate at start (in-process embedders and tests); `ledger serve` with a
    # database URL turns it off and checks the schema version instead.
    migrate_at_start: bool = True
    # A plaintext grpc.health.v1-only port for probes that cannot speak TLS.
    health_listen: str = ""
    # One writer per database (docs/design.md): the internal WriterService.
    internal_listen: str = "127.0.0.1:0"
    advertise: str = ""  # HOST:PORT the other replicas reach internal_listen at
    writer_secret: str = field(default="", repr=False)
    writer_lease_s: float = 3.0
    # False: this replica never takes the writer lease; it forwards every command
    # and serves reads and change streams (docs/operations.md, "Where change
    # streams are served").
    writer_eligible: bool = True
    # `serve --fronts N` (ledger/fronts.py): N processes share --listen.
    fronts: int = 1
    reuse_port: bool = False

    def problems(self) -> list[str]:
        """Why this configuration must not serve (empty when it may)."""
        out: list[str] = []
        if (self.tls_cert is None) != (self.tls_key is None):
            out.append("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            out.append("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            out.append("--trace-sample-ratio must be between 0 and 1")
        if self.tls_cert is None and not self.insecure and not is_loopback(self.listen):
            out.append(
                f"refusing to serve plaintext on {self.listen}, which is not a loopback address:"
                " anyone on the network could read and forge every call (and its token)."
                " Give --tls-cert and --tls-key (and --tls-client-ca for mutual TLS), or"
                " --insecure if a proxy or mesh on this host already encrypts the traffic"
            )
        if (
            self.callers_file is None
            and not self.allow_anonymous_full_access
            and not is_loopback(self.listen)
        ):
            out.append(
                f"refusing to serve {self.listen}, which is not a loopback address, without"
                " a caller file: every caller could move every account's credits."
                " Give --callers FILE (docs/security.md), or, only where something in"
                " front authenticates every call, --allow-anonymous-full-access"
            )
        out += self.idempotency_retention().problems()
        if not self.writer_secret and not is_loopback(self.internal_listen):
            out.append(
                f"refusing to serve the internal writer service on {self.internal_listen}"
                " without a shared secret: give --writer-secret-file or LEDGER_WRITER_SECRET"
            )
        for name in ("calls_per_connection_max", "calls_per_peer_max", "anonymous_calls_max"):
            value = getattr(self, name)
            if not 1 <= value <= self.concurrent_rpcs_max:
                out.append(
                    f"--{name.replace('_', '-')} must be between 1 and the server's"
                    f" concurrent-RPC cap ({self.concurrent_rpcs_max}); it is {value}"
                )
        if self.body_wait_s <= 0:
            out.append("--body-wait-s must be more than 0")
        if self.fronts < 1:
            out.append("--fronts must be at least 1 (or auto)")
        if self.save_part_commands < 0:
            out.append("--save-part-commands must be 0 (one statement) or more")
        if self.writer_lease_s < 1.0:
            out.append("--writer-lease-s must be at least 1 s")
        return out

    def idempotency_retention(self) -> IdempotencyRetention:
        return IdempotencyRetention(
            applied=timedelta(days=self.idempotency_retention_days),
            refused=timedelta(days=self.idempotency_refused_retention_days),
            partition=timedelta(seconds=self.idempotency_partition_s),
        )


def is_loopback(listen: str) -> bool:
    """True when HOST:PORT names only this machine (127.0.0.0/8, ::1, localhost)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or empty (every interface): not provably local


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_flag(name: str) -> bool:
    """A boolean flag's default from the environment: "1", "true" or "yes" set it."""
    return _env(name, "") in ("1", "true", "yes")


def add_database_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=_env("LEDGER_DATABASE_URL", ""),
        help="PostgreSQL URL (env LEDGER_DATABASE_URL); empty = embedded PostgreSQL under --data-dir",
    )
    p.add_argument(
        "--data-dir",
        default=_env("LEDGER_DATA_DIR", ".ledger-data"),
        help="where the embedded PostgreSQL keeps its data (env LEDGER_DATA_DIR)",
    )


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    d = Config()
    add_database_flags(p)
    p.add_argument(
        "--read-database-url",
        default=_env("LEDGER_READ_DATABASE_URL", ""),
        help="PostgreSQL URL of synchronous standbys for GetBalance, GetAccount, ListEntries and"
        " the other reads (env LEDGER_READ_DATABASE_URL); used only when the primary has"
        " synchronous_commit = remote_apply, else reads stay on the primary (docs/operations.md)",
    )
    p.add_argument(
        "--listen",
        default=_env("LEDGER_LISTEN", d.listen),
        help="gRPC HOST:PORT (env LEDGER_LISTEN)",
    )
    p.add_argument(
        "--metrics-listen",
        default=_env("LEDGER_METRICS_LISTEN", d.metrics_listen),
        help="HOST:PORT of /metrics (env LEDGER_METRICS_LISTEN); empty disables it",
    )
    p.add_argument(
        "--health-listen",
        default=_env("LEDGER_HEALTH_LISTEN", d.health_listen),
        help="HOST:PORT of a plaintext port serving grpc.health.v1 only, for probes that"
        " cannot speak TLS (env LEDGER_HEALTH_LISTEN); empty (the default) disables it",
    )
    p.add_argument(
        "--metrics-asset-labels",
        action="store_true",
        default=_env_flag("LEDGER_METRICS_ASSET_LABELS"),
        help="name assets in the asset label of /metrics (env LEDGER_METRICS_ASSET_LABELS=1);"
        " off by default, because /metrics has no authentication and would list every"
        " tenant's asset names",
    )
    p.add_argument(
        "--log-level",
        default=_env("LEDGER_LOG_LEVEL", d.log_level),
        choices=["debug", "info", "warning", "error"],
    )
    p.add_argument(
        "--log-format", default=_env("LEDGER_LOG_FORMAT", d.log_format), choices=["json", "text"]
    )
    p.add_argument(
        "--pool-size-max",
        type=int,
        default=int(_env("LEDGER_POOL_SIZE_MAX", str(d.pool_size_max))),
        help="database connections per process (env LEDGER_POOL_SIZE_MAX)",
    )
    p.add_argument(
        "--batch-max", type=int, default=d.batch_max, help="commands per writer transaction"
    )
    p.add_argument(
        "--save-part-commands",
        type=int,
        default=d.save_part_commands,
        help="a writer transaction of more commands is written in statements of this many,"
        " each while the next part is applied (0: one statement)",
    )
    p.add_argument(
        "--batch-timeout-s",
        type=float,
        default=d.batch_timeout_s,
        help="a batch transaction taking longer is abandoned (UNAVAILABLE, nothing recorded)",
    )
    p.add_argument("--sweep-interval-s", type=float, default=d.sweep_interval_s)
    add_idempotency_flags(p)
    p.add_argument(
        "--refund-grace-s",
        type=float,
        default=float(_env("LEDGER_REFUND_GRACE_S", str(d.refund_grace_s))),
        help="life of a lot made by refunding into an expired lot (default 7 days)",
    )
    p.add_argument(
        "--drain-s", type=float, default=d.drain_s, help="grace for in-flight calls on SIGTERM"
    )
    obs = p.add_argument_group("tracing (docs/observability.md; off by default)")
    obs.add_argument(
        "--otlp-endpoint",
        default=_env("LEDGER_OTLP_ENDPOINT", d.otlp_endpoint),
        metavar="URL",
        help="export OpenTelemetry spans to this OTLP/gRPC collector, e.g."
        " http://otel-collector:4317 (env LEDGER_OTLP_ENDPOINT); empty: tracing off",
    )
    obs.add_argument(
        "--trace-sample-ratio",
        type=float,
        default=float(_env("LEDGER_TRACE_SAMPLE_RATIO", str(d.trace_sample_ratio))),
        metavar="RATIO",
        help="share of calls without a sampled caller trace that are traced; a caller's"
        " traceparent decides for its own calls (env LEDGER_TRACE_SAMPLE_RATIO)",
    )
    p.add_argument(
        "--migrate-at-start",
        action="store_true",
        default=_env_flag("LEDGER_MIGRATE_AT_START"),
        help="apply pending migrations before serving (env LEDGER_MIGRATE_AT_START=1);"
        " the default only with the embedded PostgreSQL. Otherwise `serve` refuses a"
        " schema other than its own: run `ledger migrate` as the owner role first",
    )
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument(
        "--tls-cert",
        default=_env("LEDGER_TLS_CERT", ""),
        metavar="PEM",
        help="server certificate chain; enables TLS (env LEDGER_TLS_CERT)",
    )
    sec.add_argument(
        "--tls-key",
        default=_env("LEDGER_TLS_KEY", ""),
        metavar="PEM",
        help="server private key (env LEDGER_TLS_KEY)",
    )
    sec.add_argument(
        "--tls-client-ca",
        default=_env("LEDGER_TLS_CLIENT_CA", ""),
        metavar="PEM",
        help="CA(s) of client certificates; enables mutual TLS (env LEDGER_TLS_CLIENT_CA)",
    )
    sec.add_argument(
        "--callers",
        default=_env("LEDGER_CALLERS_FILE", ""),
        metavar="TOML",
        help="caller file: tokens, certificates, accounts and rights of each caller;"
        " reloaded on SIGHUP (env LEDGER_CALLERS_FILE). Without it: one local caller"
        " with every right",
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        default=_env_flag("LEDGER_INSECURE"),
        help="allow plaintext on a non-loopback address (env LEDGER_INSECURE=1)",
    )
    sec.add_argument(
        "--allow-anonymous-full-access",
        action="store_true",
        default=_env_flag("LEDGER_ALLOW_ANONYMOUS_FULL_ACCESS"),
        help="serve a non-loopback address WITHOUT a caller file: anyone who reaches the"
        " port has every right on every account (env LEDGER_ALLOW_ANONYMOUS_FULL_ACCESS=1)",
    )
    lim = p.add_argument_group(
        "calls in flight (docs/security.md); past a limit: RESOURCE_EXHAUSTED"
        " TOO_MANY_CONCURRENT_CALLS at once"
    )
    for flag, env, default, meaning in (
        ("--concurrent-rpcs-max", "LEDGER_CONCURRENT_RPCS_MAX", d.concurrent_rpcs_max,
         "calls and streams the whole server holds"),
        ("--calls-per-connection-max", "LEDGER_CALLS_PER_CONNECTION_MAX",
         d.calls_per_connection_max, "calls and streams in flight on one connection"),
        ("--calls-per-peer-max", "LEDGER_CALLS_PER_PEER_MAX", d.calls_per_peer_max,
         "calls and streams in flight of one peer: the caller its token or client"
         " certificate names, else its address"),
        ("--anonymous-calls-max", "LEDGER_ANONYMOUS_CALLS_MAX", d.anonymous_calls_max,
         "calls and streams in flight of every peer known only by its address, together"),
        ("--watch-streams-per-peer-max", "LEDGER_WATCH_STREAMS_PER_PEER_MAX",
         d.watch_streams_per_peer_max, "grpc.health.v1 Watch streams of one address"),
    ):  # fmt: skip
        lim.add_argument(
            flag, type=int, default=int(_env(env, str(default))), help=f"{meaning} (env {env})"
        )
    lim.add_argument(
        "--body-wait-s",
        type=float,
        default=float(_env("LEDGER_BODY_WAIT_S", str(d.body_wait_s))),
        help="seconds a call may take to send its request after its headers, valid"
        " token or not; then DEADLINE_EXCEEDED (env LEDGER_BODY_WAIT_S)",
    )
    lim.add_argument(
        "--unary-deadline-s",
        type=float,
        default=float(_env("LEDGER_UNARY_DEADLINE_S", str(d.unary_deadline_s))),
        help="the deadline of a call that carries none (env LEDGER_UNARY_DEADLINE_S)",
    )
    add_writer_flags(p)


def add_writer_flags(p: argparse.ArgumentParser) -> None:
    d = Config()
    w = p.add_argument_group("one writer per database (docs/design.md)")
    w.add_argument(
        "--internal-listen",
        default=_env("LEDGER_INTERNAL_LISTEN", d.internal_listen),
        help="HOST:PORT of the internal writer service other replicas forward commands to"
        " (env LEDGER_INTERNAL_LISTEN; port 0 = any free port)",
    )
    w.add_argument(
        "--advertise",
        default=_env("LEDGER_ADVERTISE", d.advertise),
        help="HOST:PORT the other replicas reach --internal-listen at, published in the"
        " writer lease (env LEDGER_ADVERTISE; default: the internal address as bound)",
    )
    w.add_argument(
        "--writer-secret-file",
        default=_env("LEDGER_WRITER_SECRET_FILE", ""),
        metavar="FILE",
        help="shared secret of the replicas' internal calls (or env LEDGER_WRITER_SECRET);"
        " required unless --internal-listen is a loopback address",
    )
    w.add_argument(
        "--writer-lease-s",
        type=float,
        default=float(_env("LEDGER_WRITER_LEASE_S", str(d.writer_lease_s))),
        help="life of the writer lease; renewed every third of it (env LEDGER_WRITER_LEASE_S)",
    )
    w.add_argument(
        "--never-writer",
        action="store_true",
        default=_env_flag("LEDGER_NEVER_WRITER"),
        help="never take the writer lease: forward every command to the elected writer and"
        " serve reads and change streams only, keeping their work off the writer"
        " (env LEDGER_NEVER_WRITER=true)",
    )
    w.add_argument(
        "--fronts",
        default=_env("LEDGER_FRONTS", "1"),
        help="processes serving --listen together (SO_REUSEPORT), each reaching the elected"
        " writer as a replica does; 'auto' = one per core (env LEDGER_FRONTS)",
    )
    w.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)


def _writer_secret(args: argparse.Namespace) -> str:
    if args.writer_secret_file:
        return Path(args.writer_secret_file).read_text().strip()
    return os.environ.get("LEDGER_WRITER_SECRET", "").strip()


def from_args(args: argparse.Namespace) -> Config:
    return Config(
        listen=args.listen,
        database_url=args.database_url,
        read_database_url=args.read_database_url,
        data_dir=Path(args.data_dir),
        metrics_listen=args.metrics_listen,
        log_level=args.log_level,
        log_format=args.log_format,
        pool_size_max=args.pool_size_max,
        batch_max=args.batch_max,
        save_part_commands=args.save_part_commands,
        batch_timeout_s=args.batch_timeout_s,
        sweep_interval_s=args.sweep_interval_s,
        idempotency_retention_days=args.idempotency_retention_days,
        idempotency_refused_retention_days=args.idempotency_refused_retention_days,
        idempotency_partition_s=args.idempotency_partition_s,
        refund_grace_s=args.refund_grace_s,
        drain_s=args.drain_s,
        tls_cert=_path(args.tls_cert),
        tls_key=_path(args.tls_key),
        tls_client_ca=_path(args.tls_client_ca),
        callers_file=_path(args.callers),
        insecure=args.insecure,
        otlp_endpoint=args.otlp_endpoint,
        trace_sample_ratio=args.trace_sample_ratio,
        allow_anonymous_full_access=args.allow_anonymous_full_access,
        concurrent_rpcs_max=args.concurrent_rpcs_max,
        calls_per_connection_max=args.calls_per_connection_max,
        calls_per_peer_max=args.calls_per_peer_max,
        anonymous_calls_max=args.anonymous_calls_max,
        watch_streams_per_peer_max=args.watch_streams_per_peer_max,
        body_wait_s=args.body_wait_s,
        unary_deadline_s=args.unary_deadline_s,
        metrics_asset_labels=args.metrics_asset_labels,
        migrate_at_start=args.migrate_at_start or not args.database_url,
        health_listen=args.health_listen,
        internal_listen=args.internal_listen,
        advertise=args.advertise,
        writer_secret=_writer_secret(args),
        writer_lease_s=args.writer_lease_s,
        writer_eligible=not args.never_writer,
        fronts=_fronts(args.fronts),
        reuse_port=args.reuse_port,
    )


def _fronts(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    try:
        return int(value)
    except ValueError:
        return 0  # refused by problems()


def _path(value: str) -> Path | None:
    return Path(value) if value else None


def add_idempotency_flags(p: argparse.ArgumentParser) -> None:
    """The idempotency retention and partition grid: `serve`, and `maintain` /
    `migrate`, which make the partitions for it (same env variables)."""
    d = Config()
    p.add_argument(
        "--idempotency-retention-days",
        type=float,
        default=float(_env("LEDGER_IDEMPOTENCY_RETENTION_DAYS", str(d.idempotency_retention_days))),
        help="how long a key of an applied request replays its outcome (docs/operations.md)",
    )
    p.add_argument(
        "--idempotency-refused-retention-days",
        type=float,
        default=float(
            _env(
                "LEDGER_IDEMPOTENCY_REFUSED_RETENTION_DAYS",
                str(d.idempotency_refused_retention_days),
            )
        ),
        help="how long a key of a request refused by a rule replays its refusal",
    )
    p.add_argument(
        "--idempotency-partition-s",
        type=float,
        default=float(_env("LEDGER_IDEMPOTENCY_PARTITION_S", str(d.idempotency_partition_s))),
        help="width of the idempotency table's time partitions (keys are dropped a partition at a time)",
    )


def idempotency_retention_from_args(args: argparse.Namespace) -> IdempotencyRetention:
    return Config(
        idempotency_retention_days=args.idempotency_retention_days,
        idempotency_refused_retention_days=args.idempotency_refused_retention_days,
        idempotency_partition_s=args.idempotency_partition_s,
    ).idempotency_retention()
