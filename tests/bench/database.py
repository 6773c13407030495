"""PostgreSQL for the bench: a fresh database, facts about the server, and pgbench.

Without a URL (flag or LEDGER_BENCH_DATABASE_URL) the bench starts the
embedded PostgreSQL of pgserver and uses the pgbench that ships inside it.
pgbench's tables live in their own schema (`pgbench`) of the bench's
database, so the ledger and pgbench share the server, the database, its WAL
and its fsyncs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from tests.bench.stats import percentile

PGBENCH_SCHEMA = "pgbench"
# Connections kept free for the ledger's pool, other sessions and superusers.
CONNECTION_HEADROOM = 10


@dataclass
class Postgres:
    """Where the bench's PostgreSQL is and which pgbench goes with it."""

    admin_url: str
    pgbench: str
    embedded: Any = None  # the pgserver handle, kept alive while the bench runs

    def url_for(self, database: str) -> str:
        """The admin URL with its database replaced."""
        return urlsplit(self.admin_url)._replace(path="/" + database).geturl()


def _pgserver_bin(name: str) -> str | None:
    try:
        import pgserver
    except ImportError:
        return None
    path = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
    return str(path) if path.exists() else None


def locate(database_url: str | None, data_dir: Path) -> Postgres:
    """The configured PostgreSQL, or an embedded one started under `data_dir`."""
    if database_url:
        pgbench = shutil.which("pgbench") or _pgserver_bin("pgbench")
        if pgbench is None:
            raise RuntimeError("pgbench not found (install postgresql-client or pgserver)")
        return Postgres(admin_url=database_url, pgbench=pgbench)
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(str(data_dir))
    pgbench = _pgserver_bin("pgbench") or shutil.which("pgbench")
    if pgbench is None:
        raise RuntimeError("pgbench not found")
    return Postgres(admin_url=str(server.get_uri()), pgbench=pgbench, embedded=server)


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def create_database(pg: Postgres, name: str) -> str:
    """CREATE DATABASE `name` (with the pgbench schema in it); its URL."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"unsafe database name {name!r}")
    asyncio.run(_execute(pg.admin_url, f"CREATE DATABASE {name}"))
    url = pg.url_for(name)
    asyncio.run(_execute(url, f"CREATE SCHEMA {PGBENCH_SCHEMA}"))
    return url


def drop_database(pg: Postgres, name: str) -> None:
    """DROP DATABASE `name`, disconnecting whoever is left."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"unsafe database name {name!r}")
    asyncio.run(_execute(pg.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def _facts(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        facts: dict[str, Any] = {"version": await conn.fetchval("SELECT version()")}
        for setting in (
            "synchronous_commit", "fsync", "wal_sync_method", "shared_buffers",
            "max_connections", "default_transaction_isolation", "autovacuum",
        ):  # fmt: skip
            facts[setting] = await conn.fetchval(f"SHOW {setting}")
        return facts
    finally:
        await conn.close()


def server_facts(url: str) -> dict[str, Any]:
    """Version and the settings that bound write throughput."""
    return asyncio.run(_facts(url))


async def _backend_pids(url: str, database: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE (datname = $1 OR backend_type <> 'client backend') AND pid <> pg_backend_pid()",
            database,
        )
        return [int(r["pid"]) for r in rows]
    finally:
        await conn.close()


def backend_pids(url: str, database: str) -> list[int]:
    """PostgreSQL processes working for the bench: its backends and the background
    workers (WAL writer, checkpointer, ...), for the CPU accounting."""
    return asyncio.run(_backend_pids(url, database))


async def _free_connections(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
        used = int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
        )
        return limit - reserved - used
    finally:
        await conn.close()


def pgbench_client_limit(url: str) -> int:
    """How many pgbench clients fit next to the running server's pool."""
    return max(1, asyncio.run(_free_connections(url)) - CONNECTION_HEADROOM)


def analyze(url: str) -> None:
    """ANALYZE the bench's database, as autovacuum would soon after the setup's
    10,000 inserts on a production server. Without statistics the planner keeps
    generic plans made while the tables were empty (sequential scans), so the
    sweep would measure an artefact of the load order, not the ledger."""
    asyncio.run(_execute(url, "ANALYZE"))


def _pgbench_env() -> dict[str, str]:
    return {**os.environ, "PGOPTIONS": f"-c search_path={PGBENCH_SCHEMA}"}


def pgbench_init(pg: Postgres, url: str, scale: int) -> None:
    """`pgbench -i -s scale` into the pgbench schema."""
    subprocess.run(
        [pg.pgbench, "-i", "-q", "-s", str(scale), url],
        env=_pgbench_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )


def pgbench_run(pg: Postgres, url: str, clients: int, duration_s: int) -> dict[str, Any]:
    """tpcb-like for `duration_s` with `clients` clients on 2 threads, prepared statements.

    Every transaction's latency is logged (`-l`, one buffered line each) so that
    its p50 and p99 sit beside the ledger's at the same number in flight: what
    the machine gives a C client doing one small transaction at a time."""
    threads = min(2, clients)
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as logs:
        prefix = str(Path(logs) / "tx")
        command = [pg.pgbench, "-c", str(clients), "-j", str(threads), "-T", str(duration_s),
                   "-M", "prepared", "-l", f"--log-prefix={prefix}", url]  # fmt: skip
        done = subprocess.run(
            command,
            env=_pgbench_env(),
            capture_output=True,
            text=True,
            timeout=duration_s + 120,
            check=False,
        )
        latencies_ms = sorted(us / 1000.0 for us in _logged_latencies(Path(logs)))
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([0-9.]+) ms", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    if done.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr[-2000:]}")
    return {
        "clients": clients,
        "threads": threads,
        "duration_s": duration_s,
        "tps": float(tps.group(1)),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "latency_p50_ms": percentile(latencies_ms, 50.0) if latencies_ms else None,
        "latency_p99_ms": percentile(latencies_ms, 99.0) if latencies_ms else None,
        "failed": int(failed.group(1)) if failed else 0,
        "command": " ".join([*command[:-3], "-l", "URL"]),
    }


def _logged_latencies(logs: Path) -> list[int]:
    """Each logged transaction's latency in microseconds: the third field of
    pgbench's per-transaction log (client, transaction, time_us, script, ...)."""
    out: list[int] = []
    for path in logs.glob("tx.*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                out.append(int(fields[2]))
    return out
