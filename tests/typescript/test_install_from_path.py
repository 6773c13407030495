"""The TypeScript client installs from a path with no manual build (issue 20.4).

A copy of clients/typescript without dist/ or node_modules/ (what a caller's
checkout looks like) is installed into a fresh npm project with
`npm install <path>`; its `prepare` script must build dist/, and the
package must then import and expose the client, the typed errors and the
ErrorReason enum. Skips, saying so, without Node.js 20+.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "clients" / "typescript"
# npm ci of the dev dependencies and a tsc build on a shared 2-core machine.
RUN_TIMEOUT_S = 280


def node_major() -> int:
    done = subprocess.run(
        ["node", "-p", "process.versions.node.split('.')[0]"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout.strip())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_npm_install_from_a_path_builds_the_package(tmp_path: Path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("typescript client: SKIPPED (node not found)")
    if node_major() < 20:
        pytest.skip("typescript client: SKIPPED (node 20 or newer needed)")
    source = tmp_path / "creditledger-client"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("node_modules", "dist"))
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(
        json.dumps({"name": "caller-app", "version": "1.0.0", "private": True, "type": "module"})
    )
    env = {**os.environ, "npm_config_fund": "false", "npm_config_audit": "false"}
    installed = subprocess.run(
        ["npm", "install", "--prefer-offline", "--loglevel=error", str(source)],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout[-6000:] + installed.stderr[-6000:]
    (app / "check.mjs").write_text(
        'import { LedgerClient, RateLimited, ErrorReason, KNOWN_REASONS } from "@creditledger/client";\n'
        "console.log(JSON.stringify({client: typeof LedgerClient, error: RateLimited.name,\n"
        "  reason: ErrorReason.RATE_LIMITED, known: KNOWN_REASONS.size}));\n"
    )
    ran = subprocess.run(
        ["node", "check.mjs"], cwd=app, capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    facts = json.loads(ran.stdout)
    assert facts["client"] == "function" and facts["error"] == "RateLimited"
    assert facts["reason"] > 0 and facts["known"] >= 18
