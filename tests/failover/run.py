"""`make failover`: the ledger on a Patroni cluster, through the faults an operator meets.

For each scenario: the workload runs, the fault is injected on the primary, the
runner waits for a new primary to accept writes (a probe writing on every node
directly) and for both ledger replicas to serve writes again, heals the node,
waits for a healthy cluster, stops the workload (every call in flight retried
until it is definitive), then checks: every acknowledged command present
exactly once, `ledger verify` clean, no INTERNAL. Recovery is the time from
"the new primary accepts writes" to "both replicas served a write begun after
that moment".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.failover.cluster import DATABASE, Node, PatroniCluster
from tests.failover.workload import Workload
from tests.torture.server import LedgerServer, run_verify

ALL_SCENARIOS = ("kill", "node_loss", "switchover", "hang", "partition")
RECOVERY_TIMEOUT_S = 90.0
STEADY_S = 2.0
HANG_AFTER_FAILOVER_S = 10.0


def say(msg: str) -> None:
    print(f"[failover {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Outcome:
    name: str
    failover_s: float  # fault -> a new primary accepts writes
    recovery_s: float  # that -> both ledger replicas served writes again
    problems: list[str]


@dataclass
class Probe:
    """Writes on every node directly, every 100 ms: when does a primary accept writes?"""

    cluster: PatroniCluster
    writes: list[tuple[str, float, float]] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        await asyncio.gather(*(self._node(n) for n in self.cluster.nodes))

    async def _node(self, node: Node) -> None:
        conn: asyncpg.Connection | None = None
        while self.running:
            started = time.monotonic()
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(
                        self.cluster.node_url(node, "postgres"), timeout=0.5, command_timeout=1.0
                    )
                await conn.execute("INSERT INTO failover_probe VALUES (now())")
                self.writes.append((node.name, started, time.monotonic()))
            except asyncpg.ReadOnlySQLTransactionError:
                pass  # a standby: keep the connection, try again
            except Exception:
                if conn is not None:
                    conn.terminate()
                conn = None
            await asyncio.sleep(0.1)
        if conn is not None:
            conn.terminate()

    def first_write(self, since: float, not_on: str) -> float | None:
        ends = [end for name, start, end in self.writes if start >= since and name != not_on]
        return min(ends) if ends else None


class Run:
    def __init__(
        self,
        workdir: Path,
        scenarios: tuple[str, ...],
        server_source: Path | None = None,
        dcs: str = "etcd",
    ) -> None:
        self.server_source = server_source
        self.workdir = workdir
        self.scenarios = scenarios
        self.cluster = PatroniCluster(dcs=dcs)
        self.servers: list[LedgerServer] = []
        self.outcomes: list[Outcome] = []

    async def __call__(self) -> list[Outcome]:
        started = time.monotonic()
        await asyncio.to_thread(self.cluster.start)
        say(f"cluster up in {time.monotonic() - started:.1f} s under {self.cluster.root}")
        try:
            return await self._run()
        finally:
            for server in self.servers:
                await asyncio.to_thread(server.stop)
            await asyncio.to_thread(self.cluster.destroy)

    async def _run(self) -> list[Outcome]:
        primary = self.cluster.primary()
        assert primary is not None
        admin = await asyncpg.connect(self.cluster.node_url(primary, "postgres"))
        await admin.execute(f"CREATE DATABASE {DATABASE}")
        await admin.execute("CREATE TABLE failover_probe (at timestamptz)")
        await admin.close()
        url = self.cluster.ledger_url()
        read_url = self.cluster.ledger_url("prefer-standby")
        self.servers = [
            LedgerServer(
                url,
                self.workdir / f"ledger-{i}.log",
                name=f"ledger-{i}",
                extra_args=["--log-format", "text"]
                + ([] if self.server_source else ["--read-database-url", read_url]),
                cwd=self.server_source,
            )
            for i in range(2)
        ]
        for server in self.servers:
            await asyncio.to_thread(server.start)
        for server in self.servers:
            say(f"{server.name} serving on {server.target}; log {server.log_path}")
        probe = Probe(self.cluster)
        probe_task = asyncio.create_task(probe.run())
        workload = Workload([s.target for s in self.servers])
        try:
            await workload.setup()
            for name in self.scenarios:
                self.outcomes.append(await self.scenario(name, workload, probe))
        finally:
            probe.running = False
            await workload.close()
            with contextlib.suppress(Exception):
                await probe_task
        self.workload = workload
        return self.outcomes

    async def scenario(self, name: str, workload: Workload, probe: Probe) -> Outcome:
        old = self.cluster.primary()
        if old is None:
            raise RuntimeError("no single primary before the scenario")
        workload.start()
        await asyncio.sleep(STEADY_S)
        inject, during, heal = self._fault(name, old)
        fault_at = time.monotonic()
        await asyncio.to_thread(inject)
        say(f"{name}: injected on {old.name}")
        problems: list[str] = []
        try:
            new_primary_at = await _wait(
                lambda: probe.first_write(fault_at, old.name), "a new primary"
            )
        except TimeoutError as exc:
            # Not the ledger's doing; still heal, then check what was acknowledged.
            new_primary_at = time.monotonic()
            problems.append(f"cluster: {exc}")
        say(
            f"{name}: a new primary accepts writes {new_primary_at - fault_at:.1f} s after the fault"
        )
        meanwhile = asyncio.create_task(asyncio.to_thread(during))
        try:
            ledger_at = await _wait(lambda: workload.served_again(new_primary_at), "the ledger")
            say(f"{name}: the ledger served writes again {ledger_at - new_primary_at:.2f} s later")
        except TimeoutError as exc:
            ledger_at = time.monotonic()
            problems.append(f"recovery: {exc}")
            say(f"{name}: {exc}")
        await meanwhile
        await asyncio.to_thread(heal)
        await asyncio.to_thread(self.cluster.wait_healthy, 120.0)
        await workload.stop()
        problems += await workload.check(self.cluster.ledger_url())
        problems += [f"INTERNAL: {line}" for line in workload.internal]
        problems += [f"stale read: {line}" for line in workload.stale_reads]
        workload.internal.clear()
        workload.stale_reads.clear()
        code, output = await asyncio.to_thread(run_verify, self.cluster.ledger_url())
        if code != 0:
            problems.append(f"ledger verify exited {code}: {output[-2000:]}")
        say(
            f"{name}: acknowledged so far {workload.acked_count()}, problems {len(problems)};"
            f" calls by status {dict(workload.codes)}"
        )
        for line in problems[:20]:
            say(f"  {line}")
        return Outcome(name, new_primary_at - fault_at, ledger_at - new_primary_at, problems)

    def _fault(
        self, name: str, node: Node
    ) -> tuple[Callable[[], None], Callable[[], None], Callable[[], None]]:
        """(inject, once a new primary accepts writes, heal)."""
        c = self.cluster
        nothing: Callable[[], None] = lambda: None  # noqa: E731
        if name == "kill":
            return (lambda: c.kill_postmaster(node)), nothing, nothing  # Patroni restarts it
        if name == "node_loss":
            return (lambda: c.kill_node(node)), nothing, (lambda: c.start_node(node))
        if name == "switchover":
            others = [n for n in c.nodes if n is not node]
            return (lambda: c.switchover(node, others[0])), nothing, nothing
        if name == "hang":
            # The hung node stays frozen a while after the cluster replaced it (a
            # stuck disk does not heal on cue): a ledger that waits for it shows.
            def thaw_later() -> None:
                time.sleep(HANG_AFTER_FAILOVER_S)
                c.freeze(node, signal.SIGCONT)

            return (lambda: c.freeze(node, signal.SIGSTOP)), thaw_later, nothing
        if name == "partition":
            return (lambda: c.partition(node, True)), nothing, (lambda: c.partition(node, False))
        raise ValueError(f"unknown scenario {name!r}")


async def _wait(value: Callable[[], float | None], what: str) -> float:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        found = value()
        if found is not None:
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {what} within {RECOVERY_TIMEOUT_S:.0f} s")


def summary(outcomes: list[Outcome], acked: int) -> str:
    lost = sum(1 for o in outcomes for p in o.problems if p.startswith("lost"))
    internal = sum(1 for o in outcomes for p in o.problems if p.startswith("INTERNAL"))
    recoveries = [o.recovery_s for o in outcomes]
    p50 = statistics.median(recoveries) if recoveries else 0.0
    worst = max(recoveries, default=0.0)
    return (
        f"failover: scenarios={len(outcomes)} acked={acked} lost={lost} internal={internal}"
        f" recovery_p50={p50:.2f}s recovery_max={worst:.2f}s"
    )


def run(
    workdir: Path, scenarios: tuple[str, ...], server_source: Path | None = None, dcs: str = "etcd"
) -> tuple[list[Outcome], int]:
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Run(workdir, scenarios, server_source, dcs)
    outcomes = asyncio.run(_main(runner))
    return outcomes, runner.workload.acked_count()


async def _main(runner: Run) -> list[Outcome]:
    return await runner()
