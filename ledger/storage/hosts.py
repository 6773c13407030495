"""Multi-host database URLs: race every host, keep the one with the right role.

asyncpg takes `postgresql://u@h1:p1,h2:p2,h3:p3/db?target_session_attrs=read-write`
and tries the hosts one after the other, all of them under one `timeout`
(connect_utils._connect inside `compat.timeout(timeout)`). A host that neither
answers nor refuses (a hung primary: SIGSTOP, a stuck disk, a partition) then
eats the whole timeout on every attempt, and the new primary further down the
list is never reached: the ledger failed every call for as long as the old
primary hung.

Here every host is dialled at once, each under its own timeout, and the first
connection whose role matches `target_session_attrs` wins; the others are
closed. A host that fails gets one readable log line saying why (refused, no
answer within N s, a standby and not read-write...), not a traceback that names
only the last host's error.

A URL with a single host takes none of this: it goes to asyncpg as it is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import asyncpg

log = logging.getLogger("ledger.storage.hosts")

# target_session_attrs values (libpq's, which asyncpg follows).
READ_WRITE = "read-write"
_ATTRS = {"any", "primary", "standby", "prefer-standby", READ_WRITE, "read-only"}
_URL = re.compile(
    r"^(?P<scheme>postgres(?:ql)?://)(?P<user>[^@/?]*@)?(?P<hosts>[^/?]*)(?P<rest>.*)$"
)
# A host's failure is logged again only when its reason changes, or after this.
_LOG_REPEAT_S = 30.0


class NoHostAvailable(ConnectionError):
    """No host of a multi-host URL gave a connection of the wanted role; the message names each."""


@dataclass(frozen=True)
class HostList:
    """One single-host URL per host of a multi-host URL, and the role wanted."""

    hosts: tuple[str, ...]
    urls: tuple[str, ...]
    target: str


def parse_hosts(url: str) -> HostList | None:
    """The hosts of a multi-host URL (host1:port1,host2:port2 in the netloc); None for one host.

    Errors: ValueError for an unknown target_session_attrs.
    """
    m = _URL.match(url)
    if m is None:
        return None
    hosts = [h for h in m["hosts"].split(",") if h]
    if len(hosts) < 2:
        return None
    path, _, query = m["rest"].partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    target = next((v for k, v in params if k == "target_session_attrs"), "any")
    if target not in _ATTRS:
        raise ValueError(f"unknown target_session_attrs {target!r}")
    kept = urlencode([(k, v) for k, v in params if k != "target_session_attrs"])
    suffix = f"{path}?{kept}" if kept else path
    user = m["user"] or ""
    urls = tuple(f"{m['scheme']}{user}{h}{suffix}" for h in hosts)
    return HostList(tuple(hosts), urls, target)


def _role(conn: asyncpg.Connection) -> tuple[bool, bool]:
    """(in recovery, read-only) from what the server reported at startup (PostgreSQL 14+)."""
    settings = conn.get_settings()
    standby = getattr(settings, "in_hot_standby", "off") == "on"
    read_only = getattr(settings, "default_transaction_read_only", "off") == "on"
    return standby, read_only


async def _role_of(conn: asyncpg.Connection) -> tuple[bool, bool]:
    standby, read_only = _role(conn)
    if getattr(conn.get_settings(), "in_hot_standby", None) is None:  # before PostgreSQL 14
        standby = bool(await conn.fetchval("SELECT pg_catalog.pg_is_in_recovery()"))
    return standby, read_only or standby


def _mismatch(target: str, standby: bool, read_only: bool) -> str:
    """Why a connection of this role does not fit `target` ('' when it does)."""
    if target in (READ_WRITE, "primary"):
        if standby:
            return f"a standby (in recovery), not {target}"
        if target == READ_WRITE and read_only:
            return "read-only (default_transaction_read_only = on), not read-write"
    if target == "standby" and not standby:
        return "a primary (not in recovery), not standby"
    if target == "read-only" and not read_only:
        return "read-write, not read-only"
    return ""


def describe(exc: BaseException, timeout_s: float) -> str:
    """A failed host's reason in a few words."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s (hung, or cut off by the network?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (down or restarting?)"
    if isinstance(exc, asyncpg.PostgresError):
        return f"refused the session: {getattr(exc, 'sqlstate', '')} {exc}".strip()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class HostLog:
    """One warning per failed host, again only when its reason changes or every 30 s."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, float]] = {}

    def failed(self, host: str, reason: str) -> None:
        now = time.monotonic()
        last = self._last.get(host)
        if last is None or last[0] != reason or now - last[1] >= _LOG_REPEAT_S:
            self._last[host] = (reason, now)
            log.warning("database host %s: %s", host, reason)

    def ok(self, host: str) -> None:
        if self._last.pop(host, None) is not None:
            log.info("database host %s: connected again", host)


class RacingConnector:
    """asyncpg.Pool's `connect`: every host at once, the first of the wanted role wins."""

    def __init__(self, hosts: HostList, host_log: HostLog | None = None) -> None:
        self.hosts = hosts
        self.log = host_log or HostLog()

    async def connect(self, *_dsn: Any, timeout: float = 2.0, **kwargs: Any) -> asyncpg.Connection:
        """Errors: NoHostAvailable (a ConnectionError) naming each host's reason."""
        kwargs.pop("loop", None)
        attempts = {
            asyncio.create_task(self._attempt(url, timeout, kwargs)): host
            for host, url in zip(self.hosts.hosts, self.hosts.urls, strict=True)
        }
        reasons: dict[str, str] = {}
        spare: asyncpg.Connection | None = None  # prefer-standby: a primary, kept in case
        winner: asyncpg.Connection | None = None
        pending = set(attempts)
        try:
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    host = attempts[task]
                    exc = task.exception()
                    if exc is not None:
                        reasons[host] = describe(exc, timeout)
                        continue
                    conn, why = task.result()
                    if winner is None and not why:
                        winner = conn
                        self.log.ok(host)
                    elif why and self.hosts.target == "prefer-standby" and spare is None:
                        spare = conn
                    else:
                        conn.terminate()
                        if why:
                            reasons[host] = why
        finally:
            await _discard(pending)
        winner = winner or spare
        if winner is not None:
            if spare is not None and spare is not winner:
                spare.terminate()
            return winner
        for host in self.hosts.hosts:
            self.log.failed(host, reasons.get(host, "no answer"))
        raise NoHostAvailable(
            f"no {self.hosts.target} host among {len(self.hosts.hosts)}: "
            + "; ".join(f"{h} {reasons.get(h, 'no answer')}" for h in self.hosts.hosts)
        )

    async def _attempt(
        self, url: str, timeout_s: float, kwargs: dict[str, Any]
    ) -> tuple[asyncpg.Connection, str]:
        async with asyncio.timeout(timeout_s):
            conn = await asyncpg.connect(url, timeout=timeout_s, **kwargs)
            try:
                standby, read_only = await _role_of(conn)
            except BaseException:
                conn.terminate()
                raise
        if self.hosts.target == "prefer-standby":
            return conn, "" if standby else "not a standby"
        return conn, _mismatch(self.hosts.target, standby, read_only)


async def _discard(tasks: set[asyncio.Task[tuple[asyncpg.Connection, str]]]) -> None:
    """Cancel attempts still running; close what they connected in the meantime.
    Each attempt closes its own connection as it ends, so a caller cancelled
    while it waits here (the wait is not under suppress(BaseException): that
    swallowed the caller's cancellation too, ledger.service.tasks) leaks none."""
    for task in tasks:
        task.add_done_callback(_terminate_connected)
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


def _terminate_connected(task: asyncio.Task[tuple[asyncpg.Connection, str]]) -> None:
    if not task.cancelled() and task.exception() is None:
        conn, _ = task.result()
        conn.terminate()


async def connect(url: str, timeout_s: float, **kwargs: Any) -> asyncpg.Connection:
    """One connection: raced over the hosts of a multi-host URL, else asyncpg's own connect.

    Errors: OSError (NoHostAvailable among them), TimeoutError, asyncpg errors.
    """
    hosts = parse_hosts(url)
    if hosts is None:
        return await asyncpg.connect(url, timeout=timeout_s, **kwargs)
    return await RacingConnector(hosts).connect(timeout=timeout_s, **kwargs)


def connector_for(
    url: str, host_log: HostLog | None = None
) -> Callable[..., Coroutine[Any, Any, asyncpg.Connection]] | None:
    """The pool's `connect` for a multi-host URL; None for one host (asyncpg's own)."""
    hosts = parse_hosts(url)
    return RacingConnector(hosts, host_log).connect if hosts is not None else None


class TracebackFreeFilter(logging.Filter):
    """asyncpg.pool logs "Failed to restore the pool connection floor" with a traceback
    of the last host's error; put the error's message on the line instead (it names
    every host, from NoHostAvailable), so "a standby, not read-write" is not hidden."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True
