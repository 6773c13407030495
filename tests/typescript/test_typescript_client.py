"""The TypeScript client's build and tests, run inside the Python suite.

clients/typescript/run-tests.sh does the work (npm ci, generated-code check,
tsc, node --test with the email scenario against a real `ledger serve`); this
wrapper makes it count in `make test` and skips, saying so, without Node.js.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.db import TestDatabase

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "clients" / "typescript" / "run-tests.sh"
# npm ci, a tsc build and a server start on a 2-core machine shared with others.
RUN_TIMEOUT_S = 280


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_typescript_client(test_database: TestDatabase) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("typescript client: SKIPPED (node not found)")
    env = dict(os.environ)
    # The same PostgreSQL as the rest of the run: the machine's, or the embedded one.
    env["LEDGER_TEST_DATABASE_URL"] = test_database.admin_url
    # The interpreter running pytest is the one with the server installed.
    env.setdefault("LEDGER_PYTHON", sys.executable)
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if "SKIPPED" in result.stdout and result.returncode == 0:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, (
        f"clients/typescript/run-tests.sh exited {result.returncode}\n"
        f"--- stdout (tail) ---\n{result.stdout[-12_000:]}\n"
        f"--- stderr (tail) ---\n{result.stderr[-6_000:]}"
    )
