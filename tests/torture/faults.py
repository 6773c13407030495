"""The fault injector: one fault at a time, drawn from a seeded schedule.

Every fault undoes itself before the next one starts (a killed server is
restarted, a stopped PostgreSQL is started, a paused server is resumed), the
way a supervisor would; what must come back *without* help (the server's pool
after a PostgreSQL restart or a terminated backend) gets none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from tests.torture.history import Fault
from tests.torture.pg import PgCluster, with_database
from tests.torture.server import LedgerServer
from tests.torture.workload import Workload

# Relative weights of the fault kinds.
WEIGHTS = {
    "sigkill": 3.0,
    "sigstop": 2.0,
    "pg_terminate_backend": 3.0,
    "pg_restart_fast": 1.5,
    "pg_restart_immediate": 1.5,
    "expiry_race": 2.0,
    # The elected writer (issue 22): killed, or paused past its lease and fenced.
    "writer_kill": 2.0,
    "writer_sigstop": 1.5,
    # `--fronts N` (issue 19): one front of a pod killed, its supervisor starts it again.
    "front_kill": 2.0,
}
PG_KINDS = ("pg_restart_fast", "pg_restart_immediate")
FRONT_KINDS = ("front_kill",)


def fault_kinds(private_cluster: bool, fronts: bool) -> list[str]:
    """The kinds a run draws from: PostgreSQL restarts need its own cluster, front kills fronts."""
    return [
        k
        for k in WEIGHTS
        if (private_cluster or k not in PG_KINDS) and (fronts or k not in FRONT_KINDS)
    ]


@dataclass
class FaultInjector:
    rng: random.Random
    servers: list[LedgerServer]
    workload: Workload
    admin_url: str
    database: str
    cluster: PgCluster | None
    gap_s: tuple[float, float] = (2.0, 6.0)
    faults: list[Fault] = field(default_factory=list)
    stopping: bool = False

    @property
    def kinds(self) -> list[str]:
        return fault_kinds(self.cluster is not None, any(s.fronts > 1 for s in self.servers))

    def counts(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)

    async def run(self, until_monotonic: float) -> None:
        kinds = self.kinds
        weights = [WEIGHTS[k] for k in kinds]
        # Every kind once first (in a seeded order), so that even a short run
        # meets them all; then weighted draws.
        first_round = self.rng.sample(kinds, len(kinds))
        # The first fault comes after the workload has warmed up a little.
        await asyncio.sleep(self.rng.uniform(*self.gap_s))
        while not self.stopping and time.monotonic() < until_monotonic:
            kind = first_round.pop(0) if first_round else self.rng.choices(kinds, weights)[0]
            fault = Fault(kind, round(self.workload.now(), 3))
            self.faults.append(fault)
            try:
                fault.detail = await getattr(self, kind)()
            except Exception as err:  # a fault that fails to run is reported, not fatal
                fault.detail = f"injector error: {err!r}"
            fault.t_end = round(self.workload.now(), 3)
            await asyncio.sleep(self.rng.uniform(*self.gap_s))

    # ---- the faults ------------------------------------------------------------

    async def sigkill(self) -> str:
        server = self.rng.choice(self.servers)
        down_s = self.rng.uniform(0.2, 2.5)
        server.kill()
        await asyncio.sleep(down_s)
        await asyncio.to_thread(server.start)
        return f"{server.name} killed, restarted after {down_s:.1f}s"

    async def sigstop(self) -> str:
        server = self.rng.choice(self.servers)
        pause_s = self.workload.cfg.deadline_s + self.rng.uniform(1.0, 4.0)
        server.pause()
        try:
            await asyncio.sleep(pause_s)
        finally:
            server.resume()
        return f"{server.name} stopped for {pause_s:.1f}s"

    async def _writer(self) -> tuple[LedgerServer, str] | None:
        """The server the lease row names and the internal address it names (with
        fronts, the writer's front), or None (no election, or none elected)."""
        conn = await asyncpg.connect(with_database(self.admin_url, self.database), timeout=5)
        try:
            address = await conn.fetchval("SELECT address FROM writer_lease WHERE id = 1")
        except asyncpg.UndefinedTableError:
            return None
        finally:
            await conn.close()
        found = [s for s in self.servers if address in s.internal_addresses and s.alive()]
        return (found[0], address) if found else None

    async def writer_kill(self) -> str:
        found = await self._writer()
        if found is None:
            return "skipped: no elected writer found"
        writer, address = found
        if writer.fronts > 1:  # the writer is one front of a pod: SIGKILL that front only
            return await self._kill_front(writer, address, "writer front")
        down_s = self.rng.uniform(0.2, 2.5)
        writer.kill()
        await asyncio.sleep(down_s)
        await asyncio.to_thread(writer.start)
        return f"writer {writer.name} killed, restarted after {down_s:.1f}s"

    async def front_kill(self) -> str:
        pods = [s for s in self.servers if s.fronts > 1 and s.alive()]
        if not pods:
            return "skipped: no server with fronts"
        pod = self.rng.choice(pods)
        return await self._kill_front(pod, self.rng.choice(pod.internal_addresses), "front")

    async def _kill_front(self, pod: LedgerServer, address: str, what: str) -> str:
        started = time.monotonic()
        pid = pod.kill_front(address)
        if pid is None:
            return f"skipped: {pod.name} has no live front at {address}"
        await asyncio.to_thread(pod.wait_front_back, address, pid)
        return (
            f"{what} {address} (pid {pid}) of {pod.name} killed, "
            f"back after {time.monotonic() - started:.1f}s"
        )

    async def writer_sigstop(self) -> str:
        found = await self._writer()
        if found is None:
            return "skipped: no elected writer found"
        writer, address = found
        pause_s = 2.0 + self.rng.uniform(1.0, 4.0)  # past its 2 s lease: another takes over
        if writer.fronts > 1:
            pid = writer.front_pids().get(address)
            if pid is None:
                return f"skipped: {writer.name} has no live front at {address}"
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(pause_s)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            return f"writer front {address} of {writer.name} stopped for {pause_s:.1f}s"
        writer.pause()
        try:
            await asyncio.sleep(pause_s)
        finally:
            writer.resume()
        return f"writer {writer.name} stopped for {pause_s:.1f}s"

    async def pg_terminate_backend(self) -> str:
        """Cut the ledger's sessions, first those inside a transaction or a query."""
        killed = 0
        conn = await asyncpg.connect(self.admin_url, timeout=5)
        try:
            for round_no in range(self.rng.randint(2, 5)):
                states = (
                    ["active", "idle in transaction"]
                    if round_no < 2
                    else ["active", "idle in transaction", "idle"]
                )
                killed += await conn.fetchval(
                    """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                       WHERE datname = $1 AND pid <> pg_backend_pid()
                         AND backend_type = 'client backend' AND state = ANY($2::text[])""",
                    self.database,
                    states,
                )
                await asyncio.sleep(self.rng.uniform(0.02, 0.3))
        finally:
            await conn.close()
        return f"terminated {killed} backends"

    async def _pg_restart(self, mode: str) -> str:
        if self.cluster is None:
            return "skipped: no private cluster"
        down_s = self.rng.uniform(0.5, 4.0)
        cluster = self.cluster
        await asyncio.to_thread(cluster.stop, mode)  # type: ignore[arg-type]
        try:
            await asyncio.sleep(down_s)
        finally:
            await asyncio.to_thread(cluster.start)
        return f"postgres -m {mode} stopped for {down_s:.1f}s"

    async def pg_restart_fast(self) -> str:
        return await self._pg_restart("fast")

    async def pg_restart_immediate(self) -> str:
        return await self._pg_restart("immediate")

    async def expiry_race(self) -> str:
        return await self.workload.expiry_race(random.Random(self.rng.random()))

    # ---- healing -----------------------------------------------------------------

    async def heal(self) -> list[str]:
        """Everything up again: PostgreSQL started, servers resumed or restarted."""
        actions = []
        if self.cluster is not None and not self.cluster.is_running():
            await asyncio.to_thread(self.cluster.start)
            actions.append("started postgres")
        for server in self.servers:
            if server.paused:
                server.resume()
                actions.append(f"resumed {server.name}")
            if not server.alive():
                await asyncio.to_thread(server.start)
                actions.append(f"restarted {server.name}")
        return actions
