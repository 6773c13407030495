"""`make breaking` (.ci/buf-breaking) picks the right baseline and catches a break.

A scratch git repository holds this repo's buf.yaml, protos/ and the script;
commits on `main` and on a branch play the situations CI meets.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.files import REPO

pytestmark = pytest.mark.timeout(120)

PROTO = Path("protos/creditledger/v1/ledger.proto")
BUF = REPO / ".venv" / "bin" / "buf"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def _check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repo / ".ci" / "buf-breaking")],
        cwd=repo,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "BUF": str(BUF), "HOME": str(repo)},
        timeout=90,
        check=False,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not BUF.exists():
        pytest.skip("needs git and .venv/bin/buf (make install)")
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "buf-breaking", repo / ".ci" / "buf-breaking")
    shutil.copy(REPO / "buf.yaml", repo / "buf.yaml")
    shutil.copytree(REPO / "protos", repo / "protos")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "contract")
    return repo


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / PROTO
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


ADDED_FIELD = (
    "  string next_page_token = 2;\n}\n",
    "  string next_page_token = 2;\n  // New.\n  string note = 3;\n}\n",
)
BROKEN_TYPE = ("string account_id = 1;", "int64 account_id = 1;")


def test_a_one_commit_clone_has_nothing_to_compare_and_passes(repo: Path) -> None:
    done = _check(repo)
    assert done.returncode == 0 and "SKIPPED" in done.stdout, done.stdout + done.stderr


def test_a_branch_that_adds_passes_and_one_that_breaks_fails(repo: Path) -> None:
    _git(repo, "checkout", "-q", "-b", "feature")
    _edit(repo, *ADDED_FIELD)
    added = _check(repo)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "merge base with main" in added.stdout
    _edit(repo, *BROKEN_TYPE)
    broken = _check(repo)
    assert broken.returncode != 0
    assert "changed type" in broken.stdout + broken.stderr


def test_a_branch_behind_main_is_not_blamed_for_what_main_added(repo: Path) -> None:
    _git(repo, "checkout", "-q", "-b", "feature")
    _git(repo, "checkout", "-q", "main")
    _edit(repo, *ADDED_FIELD)  # main gains a field the branch does not have
    _git(repo, "commit", "-q", "-am", "main adds a field")
    _git(repo, "checkout", "-q", "feature")
    done = _check(repo)
    assert done.returncode == 0, done.stdout + done.stderr


def test_on_main_each_commit_is_checked_against_the_one_before(repo: Path) -> None:
    _edit(repo, *ADDED_FIELD)
    _git(repo, "commit", "-q", "-am", "add")
    assert _check(repo).returncode == 0
    _edit(repo, *BROKEN_TYPE)
    _git(repo, "commit", "-q", "-am", "break")
    done = _check(repo)
    assert done.returncode != 0 and "HEAD~1" in done.stdout, done.stdout


def test_on_main_a_release_tag_is_the_baseline(repo: Path) -> None:
    _git(repo, "tag", "v0.1.0")
    _edit(repo, *ADDED_FIELD)
    _git(repo, "commit", "-q", "-am", "add")
    _edit(repo, "// New.\n  string note = 3;", "// New.\n  int64 note = 3;")
    _git(repo, "commit", "-q", "-am", "retype the new field before any release")
    done = _check(repo)
    # Against the tag the field never existed: retyping it before a release breaks nobody.
    assert done.returncode == 0, done.stdout + done.stderr
    assert "v0.1.0" in done.stdout


def test_a_detached_checkout_of_a_change_is_compared_with_its_fork_from_main(repo: Path) -> None:
    # CI checks out the change under test without a branch.
    _git(repo, "checkout", "-q", "-b", "feature")
    _edit(repo, *BROKEN_TYPE)
    _git(repo, "commit", "-q", "-am", "break")
    _git(repo, "checkout", "-q", "--detach")
    done = _check(repo)
    assert done.returncode != 0 and "merge base with main" in done.stdout, done.stdout
