"""Flags and environment variables -> one frozen Config."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    database_url: str = ""
    data_dir: Path = Path(".ledger-data")
    metrics_listen: str = "127.0.0.1:9464"
    log_level: str = "info"
    log_format: str = "json"
    pool_size_max: int = 10
    batch_max: int = 256
    sweep_interval_s: float = 1.0
    idempotency_retention_days: float = 7.0
    refund_grace_s: float = 7 * 86400.0
    drain_s: float = 10.0
    database_wait_s: float = 30.0


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


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
    p.add_argument("--sweep-interval-s", type=float, default=d.sweep_interval_s)
    p.add_argument(
        "--idempotency-retention-days",
        type=float,
        default=float(_env("LEDGER_IDEMPOTENCY_RETENTION_DAYS", str(d.idempotency_retention_days))),
    )
    p.add_argument(
        "--refund-grace-s",
        type=float,
        default=float(_env("LEDGER_REFUND_GRACE_S", str(d.refund_grace_s))),
        help="life of a lot made by refunding into an expired lot (default 7 days)",
    )
    p.add_argument(
        "--drain-s", type=float, default=d.drain_s, help="grace for in-flight calls on SIGTERM"
    )


def from_args(args: argparse.Namespace) -> Config:
    return Config(
        listen=args.listen,
        database_url=args.database_url,
        data_dir=Path(args.data_dir),
        metrics_listen=args.metrics_listen,
        log_level=args.log_level,
        log_format=args.log_format,
        pool_size_max=args.pool_size_max,
        batch_max=args.batch_max,
        sweep_interval_s=args.sweep_interval_s,
        idempotency_retention_days=args.idempotency_retention_days,
        refund_grace_s=args.refund_grace_s,
        drain_s=args.drain_s,
    )
