"""sync.py is generated from aio.py; a change to one without regenerating fails here."""

from __future__ import annotations

import subprocess
import sys

from tests.client.venv import CLIENT_DIST


def test_sync_client_is_regenerated_from_the_async_one() -> None:
    tool = CLIENT_DIST / "tools" / "unasync.py"
    done = subprocess.run(
        [sys.executable, str(tool), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_clients_offer_the_same_methods() -> None:
    from creditledger_client import LedgerClient, SyncLedgerClient

    def public(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_")}

    assert public(LedgerClient) == public(SyncLedgerClient)
    rpcs = {
        "create_account", "get_account", "grant", "reserve", "reserve_group", "settle",
        "release", "refund", "charge", "get_reservation", "get_reservation_group",
        "get_balance", "list_entries", "submit_batch", "batcher",
        "set_spending_limits", "set_member_cap", "void_grant", "create_grant_schedule",
        "get_grant_schedule", "list_grant_schedules", "iter_grant_schedules",
        "update_grant_schedule", "cancel_grant_schedule", "get_breakage", "get_statement",
        "set_balance_alert", "list_balance_alerts", "delete_balance_alert",
        "watch_transactions",
    }  # fmt: skip
    assert rpcs <= public(LedgerClient)
