"""Connecting: the asyncpg pool, the embedded PostgreSQL, migrations."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from ledger.storage import hosts, idempotency
from ledger.storage.postgres import json_codec_init

log = logging.getLogger("ledger.storage")
logging.getLogger("asyncpg.pool").addFilter(hosts.TracebackFreeFilter())

_MIGRATION_LOCK_KEY = 0x43524C44  # "CRLD": one advisory lock for every migrating process


@dataclass(frozen=True)
class PoolSettings:
    min_size: int = 2
    max_size: int = 10
    # Per host: a multi-host URL's hosts are dialled at once (ledger.storage.hosts),
    # each under this timeout, so one hung host cannot eat the others' time.
    connect_timeout_s: float = 2.0
    # A silent database (a partition) must not outlive callers' deadlines:
    # each statement gives up after this, and the call answers UNAVAILABLE.
    command_timeout_s: float = 3.0


async def create_pool(url: str, settings: PoolSettings = PoolSettings()) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=settings.min_size,
        max_size=settings.max_size,
        timeout=settings.connect_timeout_s,
        command_timeout=settings.command_timeout_s,
        init=json_codec_init(),
        # asyncpg caches prepared statements; a generic plan made while the tables
        # were empty (or never analyzed: autovacuum may be off) would scan them in
        # full forever after. Our statements are cheap to plan: plan each execution.
        server_settings={"plan_cache_mode": "force_custom_plan"},
        # Idle connections are recycled so that a restarted database is noticed.
        max_inactive_connection_lifetime=60.0,
        # A multi-host URL: race the hosts, keep the one of the wanted role.
        connect=hosts.connector_for(url),
    )
    return pool


async def wait_for_database(url: str, timeout_s: float) -> None:
    """Retry connecting (with backoff) until the database answers or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.1
    while True:
        try:
            conn = await hosts.connect(url, 2.0)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if loop.time() + delay > deadline:
                raise ConnectionError(
                    f"database not reachable after {timeout_s:.0f} s: {_why(exc)}"
                ) from exc
            log.warning("database not reachable yet (%s); retrying", _why(exc))
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


async def read_endpoint_problem(url: str) -> str:
    """Why reads must not go to standbys ('' when they may).

    A read on a standby sees every acknowledged write only when each commit waited
    for the synchronous standbys to apply it: synchronous_commit = remote_apply with
    synchronous_standby_names set, as the ledger's own sessions on the primary see them.
    """
    conn = await hosts.connect(url, 10.0)
    try:
        commit, standbys = await conn.fetchrow(
            "SELECT current_setting('synchronous_commit'),"
            " current_setting('synchronous_standby_names')"
        )
    finally:
        await conn.close()
    if commit != "remote_apply":
        return f"synchronous_commit is {commit!r} on the primary, not 'remote_apply'"
    if not standbys:
        return "synchronous_standby_names is empty on the primary: no commit waits for a standby"
    return ""


def _why(exc: BaseException) -> str:
    # NoHostAvailable's message names each host's reason; others: the type is enough.
    return str(exc) if isinstance(exc, hosts.NoHostAvailable) else type(exc).__name__


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for item in resources.files("ledger.storage").joinpath("migrations").iterdir():
        name = item.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name, item.read_text()))
    return sorted(found)


async def migrate(url: str) -> list[str]:
    """Apply pending migrations under an advisory lock; safe when many processes start at once.

    Returns the names of the migrations this call applied.
    """
    conn = await hosts.connect(url, 10.0)
    applied: list[str] = []
    try:
        # A transaction-scoped lock: released by COMMIT/ROLLBACK on the same
        # connection, so it also holds behind PgBouncer in transaction mode.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in _migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(name)
                log.info("applied migration %s", name)
    finally:
        await conn.close()
    return applied


async def migration_status(url: str) -> list[tuple[str, datetime | None]]:
    """Every migration this build knows, oldest first, with when it was applied
    (None: pending). Reads only; a database never migrated has all pending."""
    conn = await hosts.connect(url, 10.0)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        rows = (
            await conn.fetch("SELECT version, applied_at FROM schema_migrations") if exists else []
        )
    finally:
        await conn.close()
    applied = {r["version"]: r["applied_at"] for r in rows}
    return [(name, applied.get(version)) for version, name, _ in _migrations()]


async def set_up_serving_role(url: str, role: str, password: str | None) -> None:
    """`ledger migrate --serving-role`: see ledger.storage.roles. Errors: RoleError."""
    from ledger.storage import roles

    conn = await asyncpg.connect(url, timeout=10.0)
    try:
        await roles.grant_serving_role(conn, role, password)
    finally:
        await conn.close()


async def maintain_partitions(
    url: str, until: datetime, width: timedelta, now: datetime | None = None
) -> idempotency.MaintenanceResult:
    """`ledger maintain`: one round of idempotency partition maintenance (create
    them up to `until`, detach and drop the expired ones) under its advisory
    lock. Run as the owner role: the serving role may not run this DDL."""
    conn = await hosts.connect(url, 10.0)
    try:
        return await idempotency.maintain(conn, now or datetime.now(UTC), until, width)
    finally:
        await conn.close()


async def schema_problem(url: str) -> str | None:
    """Why `ledger serve` must not serve this database without migrating it
    (ledger.storage.roles.schema_problem); None when its schema is this code's."""
    from ledger.storage import roles

    conn = await asyncpg.connect(url, timeout=10.0)
    try:
        applied = await roles.applied_versions(conn)
    finally:
        await conn.close()
    return roles.schema_problem(applied, {version for version, _, _ in _migrations()})


class EmbeddedPostgres:
    """PostgreSQL from the `pgserver` package, with its data under `data_dir`.

    Data persists across restarts; the server is stopped on `stop()` (and by
    pgserver at interpreter exit).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        import pgserver  # imported here: only the embedded mode needs it

        pgdata = self.data_dir / "pgdata"
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(pgdata, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.cleanup()
            finally:
                self._server = None
