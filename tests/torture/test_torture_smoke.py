"""A short torture run (about 35 s of faults) as part of the suite.

It runs `python -m tests.torture` as a user would, with its own PostgreSQL
cluster (so PostgreSQL restarts are in the schedule), and reads the summary
line. Violations whose signature is a bug already reported and covered by an
xfail(strict) regression test make this test xfail rather than fail, naming
the bug; any other violation fails it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.torture.fixtures import REPO

SECONDS = 35
SEED = 20261122
SUMMARY = re.compile(
    r"^torture: ops=(\d+) acked=(\d+) unknown_resolved=(\d+) faults=(\d+) violations=(\d+) seed=(\d+)$"
)
# (violation kind, text in its detail) -> the reported bug and its regression test.
# Fixed and now plain regression tests: INTERNAL after pg_terminate_backend
# (tests/faults/test_backend_terminated.py), a late Grant replay refused
# (tests/torture/test_regressions.py). A new finding goes here only together
# with an xfail(strict) regression test.
# Also fixed: acknowledged batches never committed after a cancelled BEGIN
# (tests/faults/test_cancelled_batch.py). None is open.
LOST_COMMITS = "acknowledged batches never committed after a cancelled BEGIN (tests/faults/test_cancelled_batch.py)"
KNOWN_BUGS: dict[tuple[str, str], str] = {}
# What that bug's lost writes look like downstream; accepted only in a run
# where the bug's own signature (acknowledged keys missing) shows too.
LOST_COMMIT_CONSEQUENCES = {
    "acked_reservation_missing", "unexpected_status", "settled_mismatch", "refunded_mismatch",
    "released_mismatch", "granted_mismatch", "grant_count_mismatch", "reserved_mismatch",
    "available_mismatch", "balance_settled_mismatch", "balance_refunded_mismatch",
    "entries_balance_mismatch", "replay_differs", "final_settle_not_closed",
    # A lost record lets a replayed or reused key run again: a second effect.
    "replay_not_marked", "replay_response_differs", "key_reuse_not_refused", "phantom_reservation",
}  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def known_bug(kind: str, detail: str) -> str | None:
    for (k, text), bug in KNOWN_BUGS.items():
        if k == kind and text in detail:
            return bug
    return None


def _run_torture(
    tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[str], list[int]]:
    """`python -m tests.torture ARGS` as a user runs it: the process, its output
    lines, and the summary line's numbers (ops, acked, unknown_resolved, faults,
    violations, seed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.torture", *args, "--clients", "10", "--accounts", "80",
         "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    match = SUMMARY.match(lines[-1])
    assert match, f"last line is not the summary: {lines[-1]!r}\n{proc.stderr[-3000:]}"
    assert lines[-2].startswith("faults: "), lines[-2]
    return proc, lines, [int(g) for g in match.groups()]


def test_torture_smoke(tmp_path: Path) -> None:
    proc, lines, numbers = _run_torture(tmp_path, "--seconds", str(SECONDS), "--seed", str(SEED))
    ops, acked, _resolved, faults, violations, seed = numbers
    assert seed == SEED and ops > 500 and acked > 0 and faults >= 3, lines[-1]
    if violations == 0:
        assert proc.returncode == 0
        return
    assert proc.returncode != 0
    histories = list(tmp_path.glob("*/history.jsonl"))
    assert histories, "a failing run must leave its history"
    found = [json.loads(line) for line in histories[0].read_text().splitlines()]
    violations_found = [v for v in found if v["type"] == "violation"]
    lost_commits = any(v["kind"] == "key_not_recorded" for v in violations_found)
    unknown = [
        v
        for v in violations_found
        if not known_bug(v["kind"], v["detail"])
        and not (lost_commits and v["kind"] in LOST_COMMIT_CONSEQUENCES)
    ]
    assert not unknown, "\n".join(lines[-60:])
    bugs = sorted({b for v in violations_found if (b := known_bug(v["kind"], v["detail"]))})
    pytest.xfail(f"only known, reported server bugs: {'; '.join(bugs)}")


FRONTS_SEED = 20261219  # its first faults: the writer's front killed, backends cut, a front killed
FRONTS_SECONDS = 30


def test_torture_smoke_with_fronts(tmp_path: Path, pg_admin_url: str) -> None:
    """Issue 19's process boundary under the injector: one `ledger serve --fronts 3`
    on the suite's PostgreSQL, with a front SIGKILLed (its supervisor starts it
    again) and the writer's front SIGKILLed and paused past its lease, while the
    clients retry through the one port; no violation."""
    proc, lines, numbers = _run_torture(
        tmp_path, "--seconds", str(FRONTS_SECONDS), "--seed", str(FRONTS_SEED),
        "--servers", "1", "--fronts", "3", "--database-url", pg_admin_url, "--keep-history",
    )  # fmt: skip
    ops, acked, _resolved, _faults, violations, _seed = numbers
    assert violations == 0 and proc.returncode == 0, "\n".join(lines[-60:])
    assert ops > 300 and acked > 0, lines[-1]
    histories = list(tmp_path.glob("*/history.jsonl"))
    assert histories, "--keep-history leaves the history"
    faults = [
        f
        for f in (json.loads(line) for line in histories[0].read_text().splitlines())
        if f["type"] == "fault"
    ]
    done = {(f["kind"], f["detail"].split(" ", 2)[0]) for f in faults}
    assert ("writer_kill", "writer") in done, faults  # "writer front 127.0.0.1:... killed"
    assert ("front_kill", "front") in done, faults
    killed = [f["detail"] for f in faults if f["kind"] in ("writer_kill", "front_kill")]
    assert all(" killed, back after " in d for d in killed), killed
