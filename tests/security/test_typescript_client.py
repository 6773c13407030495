"""The TypeScript client over TLS with a token, and over mutual TLS, against a
real server. Needs Node.js and the client built (clients/typescript/run-tests.sh
builds it; tests/typescript runs that), else it skips saying so."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.security.conftest import Pki, Served
from tests.support.process import REPO

DIST = REPO / "clients" / "typescript" / "dist" / "src" / "index.js"

SCRIPT = """
import { LedgerClient } from "%(dist)s";
import { readFileSync } from "node:fs";
const ca = readFileSync("%(ca)s");
const account = "tenant-a:ts-" + Date.now();
const out = [];
const admin = new LedgerClient({ target: "%(tls)s", tls: { ca }, token: "%(admin)s" });
out.push((await admin.createAccount({ accountId: account })).account.accountId === account);
const wrong = new LedgerClient({
  target: "%(tls)s", tls: { ca }, token: "clt_wrong", retry: { maxAttempts: 1 },
});
try { await wrong.getAccount({ accountId: account }); out.push("no error"); }
catch (e) { out.push(e.reason); }
const mutual = new LedgerClient({
  target: "%(mtls)s",
  tls: { ca, cert: readFileSync("%(cert)s"), key: readFileSync("%(key)s") },
});
out.push((await mutual.getAccount({ accountId: account })).account.accountId === account);
try { await mutual.grant({ accountId: account, asset: "crm", amount: 1n }); out.push("no error"); }
catch (e) { out.push(e.reason); }
console.log(JSON.stringify(out));
process.exit(0);
"""


async def test_typescript_client_takes_tls_and_a_token(
    tls_server: Served, mtls_server: Served, pki: Pki, tokens: dict[str, str], tmp_path: Path
) -> None:
    if shutil.which("node") is None:
        pytest.skip("typescript client over TLS: SKIPPED (node not found)")
    if not DIST.exists():
        pytest.skip(
            "typescript client over TLS: SKIPPED (client not built; run-tests.sh builds it)"
        )
    script = tmp_path / "tls.mjs"
    script.write_text(
        SCRIPT
        % {
            "dist": DIST.as_posix(),
            "ca": pki.ca.cert_path,
            "tls": tls_server.target,
            "mtls": mtls_server.target,
            "admin": tokens["admin"],
            "cert": pki.billing.cert_path,
            "key": pki.billing.key_path,
        }
    )
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.strip().splitlines()[-1] == '[true,"UNAUTHENTICATED",true,"PERMISSION_DENIED"]'
