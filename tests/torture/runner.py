"""One torture run: set up, load + faults for a bounded time, heal, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.torture.checker import Checker
from tests.torture.faults import FaultInjector, fault_kinds
from tests.torture.history import write_history
from tests.torture.pg import PgCluster, create_database, drop_database
from tests.torture.server import LedgerServer
from tests.torture.workload import Workload, WorkloadConfig

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunConfig:
    seconds: float
    seed: int
    database_url: str | None = None
    clients: int = 16
    accounts: int = 200
    servers: int = 2
    # `ledger serve --fronts N` for every server (issue 19); 1: plain servers.
    fronts: int = 1
    results_dir: Path = Path("torture-results")
    keep_history: bool = False
    faults: bool = True
    # A directory holding the `ledger` package to run (e.g. `git archive` of a
    # commit); None runs the work tree's.
    server_source: Path | None = None


@dataclass
class RunReport:
    ops: int
    acked: int
    unknown_resolved: int
    faults: int
    violations: int
    seed: int
    fault_counts: dict[str, int]
    lines: list[str]
    history_path: Path | None

    @property
    def summary(self) -> str:
        return (
            f"torture: ops={self.ops} acked={self.acked} unknown_resolved={self.unknown_resolved} "
            f"faults={self.faults} violations={self.violations} seed={self.seed}"
        )


def log(msg: str) -> None:
    print(f"[torture {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def run(cfg: RunConfig) -> RunReport:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    workdir = cfg.results_dir / f"{stamp}-seed{cfg.seed}"
    cluster: PgCluster | None = None
    if cfg.database_url is None:
        cluster = PgCluster()
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        admin_url = cluster.url
    else:
        admin_url = cfg.database_url
    database_url = await create_database(admin_url, "torture")
    # The path's name, not the URL's tail: a unix-socket URL ends in `?host=/dir`.
    database = urlsplit(database_url).path.lstrip("/")
    log(
        f"database {database_url} ({'private cluster' if cluster else 'given URL: no PostgreSQL restarts'})"
    )
    servers = [
        LedgerServer(
            database_url,
            workdir / f"server-{i}.log",
            name=f"server-{chr(65 + i)}",
            cwd=cfg.server_source,
            elects=((cfg.server_source or REPO) / "ledger" / "storage" / "lease.py").exists(),
            fronts=cfg.fronts,
        )
        for i in range(cfg.servers)
    ]
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        return await _run_with(cfg, servers, cluster, admin_url, database_url, database, workdir)
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)
        if cluster is not None:
            with contextlib.suppress(Exception):
                shutil.copy(
                    cluster.log_path, workdir / "postgres.log"
                ) if workdir.exists() else None
            await asyncio.to_thread(cluster.destroy)
        else:
            with contextlib.suppress(Exception):
                await drop_database(admin_url, database_url)


async def _run_with(
    cfg: RunConfig,
    servers: list[LedgerServer],
    cluster: PgCluster | None,
    admin_url: str,
    database_url: str,
    database: str,
    workdir: Path,
) -> RunReport:
    t0 = time.monotonic()
    wcfg = WorkloadConfig(seed=cfg.seed, clients=cfg.clients, accounts=cfg.accounts)
    workload = Workload(wcfg, [s.target for s in servers], t0)
    injector = FaultInjector(
        random.Random(cfg.seed), servers, workload, admin_url, database, cluster
    )
    try:
        await workload.setup()
        log(
            f"setup done: {cfg.accounts} accounts, {workload.initial_total} credits granted, features {asdict(workload.features)}"
        )
        until = time.monotonic() + cfg.seconds
        clients = [asyncio.create_task(workload.client(i)) for i in range(cfg.clients)]
        fault_task = asyncio.create_task(injector.run(until)) if cfg.faults else None
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        injector.stopping = True
        if fault_task is not None:
            await fault_task
        healed = await injector.heal()
        log(f"load + faults over after {cfg.seconds:.0f}s; healed: {healed or 'nothing to do'}")
        workload.stopping = True
        await asyncio.gather(*clients)
        checker = Checker(workload, servers, database_url, cfg.server_source)
        await checker.recovered()
        resolved = await checker.resolve_unknowns()
        log(f"resolved {resolved} unknown-outcome ops by replaying their keys")
        await checker.replay_sample()
        await checker.wait_for_expiries()
        await asyncio.to_thread(checker.verify)
        await checker.check_ledger()
        db_note = await checker.check_database()
    finally:
        await workload.close()
    return report(cfg, workload, injector, resolved, workdir, f"{checker.verify_output}; {db_note}")


def report(
    cfg: RunConfig,
    w: Workload,
    injector: FaultInjector,
    resolved: int,
    workdir: Path,
    verify_output: str,
) -> RunReport:
    counts = injector.counts()
    failed = [f for f in injector.faults if f.detail.startswith("injector error")]
    kinds = fault_kinds(injector.cluster is not None, cfg.fronts > 1)
    fault_line = "faults: " + " ".join(f"{k}={counts.get(k, 0)}" for k in kinds)
    if failed:
        fault_line += f" (not injected, injector errors: {len(failed)})"
    if injector.cluster is None:
        fault_line += " (pg_restart_* skipped: --database-url given)"
    ok = sum(op.status == "ok" for op in w.ops)
    refused = sum(op.status == "refused" for op in w.ops)
    acked = sum(op.acknowledged and not op.resolved for op in w.ops)
    lines = [f"violation {v.kind}: {v.detail} ops={v.op_ids[:10]}" for v in w.violations[:50]]
    if len(w.violations) > 50:
        lines.append(f"... and {len(w.violations) - 50} more violations (see the history file)")
    s = w.stats
    lines.append(
        f"outcomes: ok={ok} refused={refused} replayed_after_retry={s.replayed_after_retry} "
        f"replay_probes={s.replay_probes} reuse_probes={s.reuse_probes} duplicate_probes={s.duplicate_probes} "
        f"transport_errors={s.transport_errors} initial_total={w.initial_total}"
    )
    lines.append(f"verify: {verify_output.splitlines()[-1] if verify_output else '(no output)'}")
    lines.append(fault_line)
    rep = RunReport(
        ops=len(w.ops),
        acked=acked,
        unknown_resolved=resolved,
        faults=len(injector.faults) - len(failed),
        violations=len(w.violations),
        seed=cfg.seed,
        fault_counts=dict(counts),
        lines=lines,
        history_path=None,
    )
    if w.violations or cfg.keep_history:
        header: dict[str, Any] = {
            "seed": cfg.seed,
            "seconds": cfg.seconds,
            "clients": cfg.clients,
            "accounts": cfg.accounts,
            "servers": cfg.servers,
            "fronts": cfg.fronts,
            "private_cluster": injector.cluster is not None,
            "features": asdict(w.features),
        }
        rep.history_path = workdir / "history.jsonl"
        write_history(rep.history_path, header, w.ops, injector.faults, w.violations, rep.summary)
    return rep
