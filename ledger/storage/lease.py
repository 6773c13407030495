"""The writer lease (migration 0003) on its own database session.

A dedicated connection, not one from the pool: renewals must not wait behind
a saturated pool, and `holder_pid` names this session so that the other
replicas can see at once when the writer's process is gone (its backend
exits when the socket closes). Behind PgBouncer this session needs session
pooling (or a direct URL); the writer's batches do not.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

import asyncpg

from ledger.service.election import LeaseView
from ledger.service.ports import StorageUnavailable
from ledger.storage import hosts
from ledger.storage.postgres import _guard

# Takes the lease when it expired, was released, or its holder's lease session
# no longer exists (the process was killed: the database closed its backend).
_ACQUIRE = """
UPDATE writer_lease SET term = term + 1, holder = $1, address = $2,
    holder_pid = pg_backend_pid(), acquired_at = clock_timestamp(),
    expires_at = clock_timestamp() + make_interval(secs => $3)
WHERE id = 1 AND (
    expires_at < clock_timestamp()
    OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = writer_lease.holder_pid))
RETURNING term
"""

_RENEW = """
UPDATE writer_lease SET expires_at = clock_timestamp() + make_interval(secs => $3),
    holder_pid = pg_backend_pid()
WHERE id = 1 AND term = $1 AND holder = $2
RETURNING term
"""

_RELEASE = """
UPDATE writer_lease SET expires_at = '-infinity' WHERE id = 1 AND term = $1 AND holder = $2
"""

_CURRENT = "SELECT term, holder, address FROM writer_lease WHERE id = 1"


class PgLease:
    """The LeaseStore of ledger.service.election."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        try:
            # As the pool connects: a multi-host URL finds the primary (ledger.storage.hosts).
            conn = await hosts.connect(self._url, self._timeout_s)
        except Exception as exc:
            raise StorageUnavailable(f"no lease session: {type(exc).__name__}") from exc
        self._conn = conn
        return conn

    async def _fetchval(self, query: str, *args: object) -> object:
        conn = await self._connection()
        try:
            return await _guard(conn.fetchval(query, *args, timeout=self._timeout_s))
        except BaseException:
            # Unknown state (timed out, cancelled, broken): a new session next time.
            self._conn = None
            with suppress(Exception):
                conn.terminate()
            raise

    async def acquire(self, holder: str, address: str, ttl_s: float) -> int | None:
        term = await self._fetchval(_ACQUIRE, holder, address, ttl_s)
        return int(term) if isinstance(term, int) else None

    async def renew(self, holder: str, term: int, ttl_s: float) -> bool:
        return await self._fetchval(_RENEW, term, holder, ttl_s) is not None

    async def release(self, holder: str, term: int) -> None:
        await self._fetchval(_RELEASE, term, holder)

    async def current(self) -> LeaseView:
        conn = await self._connection()
        try:
            row = await _guard(conn.fetchrow(_CURRENT, timeout=self._timeout_s))
        except BaseException:
            self._conn = None
            with suppress(Exception):
                conn.terminate()
            raise
        if row is None:
            raise StorageUnavailable("writer_lease has no row (migration 0003 not applied?)")
        return LeaseView(int(row["term"]), row["holder"], row["address"])

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                async with asyncio.timeout(2.0):
                    await conn.close()
