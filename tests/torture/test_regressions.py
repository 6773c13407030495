"""Regression tests for what the torture runs found, one per finding.

Each says which run found it (seed and violation kind). They were xfail(strict)
while the server had the bug; the fixes flipped them to plain tests.
"""

from __future__ import annotations

import time

import pytest
from creditledger.v1 import ledger_pb2

from tests.faults.calls import ASSET, funded_account, new_key, sync_stub, until_definitive
from tests.torture.server import LedgerServer

pytestmark = pytest.mark.timeout(120)


def test_grant_replay_after_its_expiry_still_replays(ledger_process: LedgerServer) -> None:
    """The first outcome of a key is final, even when the request would now be refused."""
    with sync_stub(ledger_process.target) as stub:
        account = funded_account(stub, 10)
        grant = ledger_pb2.GrantRequest(
            account_id=account, asset=ASSET, amount=5, idempotency_key=new_key()
        )
        grant.expires_at.FromSeconds(int(time.time()) + 2)
        first = until_definitive(stub.Grant, grant)
        assert first.ok, first.describe()
        time.sleep(3)  # the lot has expired; the caller's retry comes late
        again = until_definitive(stub.Grant, grant)
        assert again.ok and again.replayed, f"{again.describe()}: {again.message}"
        assert again.body.lot.lot_id == first.body.lot.lot_id
