"""A tiny soak: two minutes, retention of 60 s in partitions of 6 s, on a cluster of its own.

It checks the pipeline (own cluster, pacing, per-minute samples, verify, the
last line) and that retention works at all: without it the table would hold
two retentions' worth of keys after two minutes; it must stay within 1.6x
the soak's bound (a minute-long sample of a rate that is still settling is
too short for the 10% the real `make soak` holds). Latency and RSS are judged
by the real `make soak`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"soak: minutes=\d+ ops=\d+ p99_first=\d+\.\d ms p99_last=\d+\.\d ms idem_rows_max=\d+"
    r" idem_rows_bound=\d+ rss_growth=-?\d+\.\d% violations=\d+"
)
TIMEOUT_S = 360


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_soak_smoke(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("the soak runs initdb as `postgres` through runuser: needs root")
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql (postgresql-15)")
    args = [
        sys.executable, "-m", "tests.bench.soak", "--minutes", "2", "--retention-s", "60", "--partition-s", "6",
        "--peak-s", "5", "--fraction", "0.3", "--accounts", "300", "--port", "25498",
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    lines = done.stdout.strip().splitlines()
    assert lines and LAST_LINE.fullmatch(lines[-1]), done.stdout[-3000:] + done.stderr[-3000:]
    [result] = tmp_path.glob("soak-*.json")
    document = json.loads(result.read_text())
    verdict = document["verdict"]
    assert verdict["verify_ok"], document
    assert verdict["idem_rows_max"] <= 1.6 * verdict["idem_rows_bound"], document
    assert all(not m["errors"] for m in document["minutes"]), document
    assert list(tmp_path.glob("soak-*.png"))
