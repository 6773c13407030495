"""A tiny run of the benchmark: its output format, its JSON, and no unexpected errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"bench: charge \d+ \(\d+\.\d\dx pgbench\), reserve-settle \d+ \(\d+\.\d\dx\),"
    r" hot \d+, charge p99 \d+\.\d ms, rss \d+ MB,"
    r" peak \d+ \(\d+\.\d\dx pgbench peak\), batch \d+ \(\d+\.\d\dx\),"
    r" watched \d+ \(\d+\.\d\dx charge\), stream lag p99 \d+ ms"
)
WORKLOADS = ("charge", "charge-watched", "reserve-settle", "hot", "batch-charge", "pool")
SMOKE_TIMEOUT_S = 90


def _bench(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One small bench run with `flags` into tmp_path: the finished process (asserted
    to exit 0) and its JSON document."""
    args = [sys.executable, "-m", "tests.bench", *flags, "--out-dir", str(tmp_path), "--verify"]
    url = os.environ.get("LEDGER_BENCH_DATABASE_URL") or os.environ.get("LEDGER_TEST_DATABASE_URL")
    if url:
        args += ["--database-url", url]
    done = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    [json_path] = tmp_path.glob("bench-*.json")
    return done, json.loads(json_path.read_text())


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S + 30)
def test_bench_smoke(tmp_path: Path) -> None:
    if importlib.util.find_spec("ledger.__main__") is None:
        pytest.skip("the server (`python -m ledger serve`) is not there yet")
    done, document = _bench(
        tmp_path,
        "--workloads", ",".join(WORKLOADS),
        "--concurrency", "1,8",
        "--duration-s", "1", "--warmup-s", "0.5",
        "--accounts", "200", "--pgbench-scale", "1",
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert LAST_LINE.fullmatch(lines[-1]), lines[-1]
    assert document["last_line"] == lines[-1]
    assert document["git"]["commit"]
    assert document["verify_exit"] == 0
    points = document["points"]
    assert {(p["workload"], p["concurrency"]) for p in points} == {
        (w, c) for w in WORKLOADS for c in (1, 8)
    }
    for point in points:
        assert point["unexpected_errors"] == {}, point
        assert point["ops"] > 0, point
    for point in (p for p in points if p["workload"] == "batch-charge"):
        # Operations are charges: 100 per SubmitBatch, and none of them failed.
        assert point["by_method"] == {"SubmitBatch.Charge": point["ops"]}, point
        assert point["ops"] % 100 == 0, point
    for point in (p for p in points if p["workload"] == "charge-watched"):
        # Four consumers on the stream replica, each received every charge of the point.
        assert point["server"]["stream_received_min"] >= point["ops"], point
        # And the same transactions: the streams open one after the other, so a
        # later one may miss what an earlier one got before it opened (it did,
        # on a loaded machine); from the first transaction they all got, the
        # same count, which a stream that missed or repeated one would break.
        assert point["server"]["stream_received_in_common_min"] > 0, point
        assert (
            point["server"]["stream_received_in_common_max"]
            == point["server"]["stream_received_in_common_min"]
        ), point
        base = next(
            p
            for p in points
            if (p["workload"], p["concurrency"]) == ("charge", point["concurrency"])
        )
        assert point["server"]["ratio_to_base"] == round(point["ops_per_s"] / base["ops_per_s"], 3)
    assert set(document["pgbench"]) == {"1", "8"}
    for run in document["pgbench"].values():
        # Every pgbench transaction's latency was logged: its p50 and p99.
        assert 0 < run["latency_p50_ms"] <= run["latency_p99_ms"], run
    p99 = re.fullmatch(
        r"p99 at 8 in flight: charge (\d+\.\d) ms \(busy \d+% of \d+%\), pgbench tpcb-like"
        r" (\d+\.\d) ms at 8 clients \(p50 \d+\.\d ms\), same run",
        lines[-2],
    )
    assert p99, lines[-2]
    assert float(p99.group(2)) == round(document["pgbench"]["8"]["latency_p99_ms"], 1)
    assert list(tmp_path.glob("bench-*.png"))
    # The median of runs (here one run twice) prints the same two lines.
    [json_path] = tmp_path.glob("bench-*.json")
    median = subprocess.run(
        [sys.executable, "-m", "tests.bench.median", str(json_path), str(json_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert median.stdout.strip().splitlines()[-2:] == lines[-2:]


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S + 30)
def test_bench_smoke_with_schedules(tmp_path: Path) -> None:
    """The charge workload on accounts that each have an active grant schedule
    (issue 23): no unexpected error, and `ledger verify` passes after it."""
    _, document = _bench(
        tmp_path,
        "--workloads", "charge", "--concurrency", "1,8",
        "--duration-s", "1", "--warmup-s", "0.5",
        "--accounts", "100", "--no-pgbench", "--schedules",
    )  # fmt: skip
    assert document["verify_exit"] == 0
    for point in document["points"]:
        assert point["unexpected_errors"] == {}, point
        assert point["ops"] > 0, point


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S + 30)
def test_bench_smoke_with_watchers_on_a_stream_replica(tmp_path: Path) -> None:
    """Issue 17's bench shape: change-stream consumers on a replica of their own
    (`--stream-replica`, a `serve --never-writer`): every consumer receives every
    charge, and the load never reached that replica."""
    _, document = _bench(
        tmp_path,
        "--workloads", "charge", "--concurrency", "8",
        "--duration-s", "1", "--warmup-s", "0.5",
        "--accounts", "100", "--no-pgbench", "--watchers", "2", "--stream-replica",
    )  # fmt: skip
    assert document["verify_exit"] == 0
    [point] = document["points"]
    assert point["unexpected_errors"] == {}, point
    watchers = document["facts"]["watchers"]
    received = watchers["received_per_stream"]
    # Both streams saw the same transactions: at least every measured charge.
    assert len(received) == 2 and received[0] == received[1] >= point["ops"], watchers
    assert "--never-writer" not in document["server_command"]
    # A writer says so (at warning level) when it stops; the stream replica never was one.
    [logs] = {p.parent for p in tmp_path.glob("**/server.log")}
    assert "no longer the writer" in (logs / "server.log").read_text()
    assert "no longer the writer" not in (logs / "server-1.log").read_text()


def test_rules_cost_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m tests.bench.rules_cost`: the writer's Python per charge, in memory."""
    from tests.bench import rules_cost

    rules_cost.main(["--charges", "20", "--rounds", "2"])
    line = capsys.readouterr().out.strip()
    m = re.fullmatch(
        r"rules_cost: ([\d.]+) us per charge \(median of 2 transactions of 20 charges;"
        r" min [\d.]+, max [\d.]+\)",
        line,
    )
    assert m, line
    assert float(m.group(1)) > 0


def test_read_cost_smoke(fresh_database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m tests.bench.read_cost`: GetBalance's storage read, alone."""
    from tests.bench import read_cost

    flags = ["--accounts", "50", "--reads", "20", "--concurrency", "2"]
    read_cost.main([*flags, "--database-url", fresh_database_url])
    line = capsys.readouterr().out.strip()
    m = re.fullmatch(
        r"read_cost: snapshot of one account p50 ([\d.]+) ms, p99 [\d.]+ ms, mean [\d.]+ ms"
        r" \(20 sequential reads\); (\d+) reads/s at 2 in flight; 50 accounts",
        line,
    )
    assert m, line
    assert float(m.group(1)) > 0 and int(m.group(2)) > 0
