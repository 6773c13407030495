"""The short failover run (one SIGKILL of the primary's postmaster, one hung primary) in the suite.

It runs `python -m tests.failover --scenarios kill,hang` as `make failover`
does (three PostgreSQL 15 nodes under Patroni with etcd, two ledger replicas
with the read endpoint on the standbys) and reads its last line. It skips,
saying why, where Patroni, etcd or PostgreSQL 15 cannot be installed or run
(deploy/install-test-tools.sh installs them with apt as root), or where the
cluster's ports are taken (another run).

What must hold: every acknowledged command present exactly once, `ledger
verify` clean, no INTERNAL, and a read on the other replica right after an
acknowledged write sees it (the run exits non-zero otherwise). The recovery
times are printed, not asserted (docs/operations.md has the figures).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.failover.cluster import missing_tools
from tests.torture.fixtures import REPO

SUMMARY = re.compile(
    r"^failover: scenarios=(\d+) acked=(\d+) lost=(\d+) internal=(\d+)"
    r" recovery_p50=([\d.]+)s recovery_max=([\d.]+)s$"
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_kill_and_hang_lose_nothing(tmp_path: Path) -> None:
    why = missing_tools()
    if why:
        pytest.skip(f"failover cluster unavailable: {why}")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.failover", "--scenarios", "kill,hang",
         "--results-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    match = SUMMARY.match(lines[-1]) if lines else None
    assert match is not None, f"no summary line (exit {proc.returncode}):\n{output[-4000:]}"
    scenarios, acked, lost, internal = (int(g) for g in match.groups()[:4])
    assert scenarios == 2, output[-4000:]
    assert acked > 0, output[-4000:]
    assert lost == 0 and internal == 0, output[-4000:]
    assert proc.returncode == 0, f"problems found:\n{output[-4000:]}"
