"""Regression tests for what the torture runs found, one per finding.

Each says which run found it (seed and violation kind) and stays xfail(strict)
while the server still has the bug, so the suite is green and the fix flips it.
"""

from __future__ import annotations

import time

import pytest
from creditledger.v1 import ledger_pb2

from tests.faults.calls import ASSET, funded_account, new_key, sync_stub, until_definitive
from tests.torture.server import LedgerServer

pytestmark = pytest.mark.timeout(120)


@pytest.mark.xfail(
    strict=True,
    reason="server bug (reported to the lead): Grant's 'expires_at must be in the future' is checked "
    "before the idempotency lookup, so a retry of an acknowledged Grant after its lot's expires_at "
    "gets INVALID_ARGUMENT instead of the replay (torture seed 101, violation replay_differs)",
)
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
