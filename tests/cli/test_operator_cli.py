"""The operator commands of `ledger`, run as subprocesses against the live server."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.cli.run import ledger, parsed
from tests.conftest import RunningServer
from tests.support.process import free_port


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_account_create_show_and_balances(ledger_server: RunningServer) -> None:
    t, account = ledger_server.target, new_id("ops")
    created = await ledger("account", "create", account, "--meta", "plan=pro", "--target", t)
    assert created.returncode == 0, created.stderr
    assert f"created account {account}" in created.stdout
    granted = await ledger(
        "grant", account, "sms_credits", "40", "--source", "promo", "--target", t
    )
    assert granted.returncode == 0, granted.stderr
    assert f"granted 40 sms_credits to {account}" in granted.stdout

    shown = await ledger("account", "show", account, "--target", t)
    lines = shown.stdout.splitlines()
    assert f"account   {account}" in lines and "metadata  plan=pro" in lines, shown.stdout
    header = next(line for line in lines if line.startswith("ASSET"))
    assert header.split() == [
        "ASSET", "AVAILABLE", "RESERVED", "GRANTED", "SETTLED", "REFUNDED", "EXPIRED",
    ]  # fmt: skip
    assert next(line for line in lines if line.startswith("sms_credits")).split() == [
        "sms_credits", "40", "0", "40", "0", "0", "0",
    ]  # fmt: skip

    as_json = parsed(await ledger("account", "show", account, "--json", "--target", t))
    assert as_json["metadata"] == {"plan": "pro"}
    assert as_json["balances"][0]["available"] == 40  # the CLI's JSON keeps integers


async def test_reserve_settle_refund_release_round_trip(ledger_server: RunningServer) -> None:
    t, account = ledger_server.target, new_id("ops")
    assert (await ledger("account", "create", account, "--target", t)).returncode == 0
    parsed(await ledger("grant", account, "crm_credits", "100", "--json", "--target", t))

    held = parsed(await ledger("reserve", account, "crm_credits", "30", "--json", "--target", t))
    rid = held["reservation"]["reservation_id"]
    assert held["reservation"]["state"] == "OPEN" and held["balance"]["reserved"] == 30
    assert held["key"] and held["replayed"] is False

    settled = parsed(await ledger("settle", rid, "20", "--final", "--json", "--target", t))
    assert settled["reservation"]["state"] == "CLOSED"
    assert settled["reservation"]["released"] == 10
    refunded = parsed(
        await ledger("refund", rid, "5", "--reason", "bounced", "--json", "--target", t)
    )
    assert refunded["balance"]["available"] == 85  # 100 - 20 + 5

    shown = await ledger("reservation", "show", rid, "--target", t)
    assert shown.returncode == 0, shown.stderr
    rows = dict(line.split(None, 1) for line in shown.stdout.splitlines() if line.strip())
    assert (rows["state"], rows["settled"], rows["refunded"]) == ("CLOSED", "20", "5")

    second = parsed(await ledger("reserve", account, "crm_credits", "7", "--json", "--target", t))
    released = parsed(
        await ledger("release", second["reservation"]["reservation_id"], "--json", "--target", t)
    )
    assert released["reservation"]["released"] == 7
    balance = parsed(await ledger("balance", account, "crm_credits", "--json", "--target", t))
    assert balance["balance"]["available"] == 85 and balance["balance"]["reserved"] == 0


async def test_same_key_twice_applies_once_and_says_replayed(ledger_server: RunningServer) -> None:
    t, account, key = ledger_server.target, new_id("ops"), uuid.uuid4().hex
    assert (await ledger("account", "create", account, "--target", t)).returncode == 0
    await ledger("grant", account, "email_opens", "10", "--target", t)
    first = await ledger("charge", account, "email_opens", "3", "--key", key, "--target", t)
    again = await ledger("charge", account, "email_opens", "3", "--key", key, "--target", t)
    assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
    assert "replayed" not in first.stdout and f"key {key}" in first.stdout
    assert "[replayed: this key was applied before; nothing changed now]" in again.stdout
    balance = parsed(await ledger("balance", account, "--json", "--target", t))
    assert balance["balances"][0]["available"] == 7


async def test_insufficient_credits_exits_1_and_says_what_to_do(
    ledger_server: RunningServer,
) -> None:
    t, account = ledger_server.target, new_id("ops")
    assert (await ledger("account", "create", account, "--target", t)).returncode == 0
    await ledger("grant", account, "email_opens", "2", "--target", t)
    refused = await ledger("charge", account, "email_opens", "3", "--target", t)
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout == ""
    assert "INSUFFICIENT_CREDITS" in refused.stderr
    assert "2 available, 3 requested" in refused.stderr and "ledger grant" in refused.stderr

    as_json = await ledger("charge", account, "email_opens", "3", "--json", "--target", t)
    assert as_json.returncode == 1
    error = parsed_error(as_json.stderr)
    assert error["reason"] == "INSUFFICIENT_CREDITS" and error["exit_code"] == 1
    assert error["metadata"]["available"] == "2" and error["key"]


def parsed_error(stderr: str) -> dict[str, Any]:
    """The `{"error": {...}}` document a failed --json command writes to stderr."""
    document: dict[str, dict[str, Any]] = json.loads(stderr)
    return document["error"]


async def test_not_found_exits_1_with_a_hint(ledger_server: RunningServer) -> None:
    t = ledger_server.target
    missing = await ledger("account", "show", new_id("nobody"), "--target", t)
    assert missing.returncode == 1
    assert "ACCOUNT_NOT_FOUND" in missing.stderr and "ledger account create" in missing.stderr
    no_res = await ledger("reservation", "show", str(uuid.uuid4()), "--target", t)
    assert no_res.returncode == 1 and "RESERVATION_NOT_FOUND" in no_res.stderr


async def test_usage_errors_exit_2(ledger_server: RunningServer) -> None:
    t = ledger_server.target
    not_a_number = await ledger("grant", "acct", "crm_credits", "ten", "--target", t)
    assert not_a_number.returncode == 2
    assert "not a whole number" in not_a_number.stderr
    # The server's INVALID_ARGUMENT is a usage error too, and names the field.
    bad_asset = await ledger("grant", new_id("ops"), "Not An Asset", "5", "--target", t)
    assert bad_asset.returncode == 2, bad_asset.stderr
    assert "INVALID_ARGUMENT" in bad_asset.stderr and "asset:" in bad_asset.stderr
    half_tls = await ledger("balance", "acct", "--tls-cert", "/nonexistent.pem", "--target", t)
    assert half_tls.returncode == 2 and "--tls-key" in half_tls.stderr


async def test_unreachable_server_exits_3_and_names_the_target() -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = await ledger("grant", "acct", "crm_credits", "5", "--target", target)
    assert result.returncode == 3, result.stderr
    assert f"Cannot reach the ledger at {target}" in result.stderr
    assert "--key " in result.stderr  # the key to retry with, so a retry cannot double-apply


async def test_target_comes_from_ledger_target_env(ledger_server: RunningServer) -> None:
    account = new_id("ops")
    env = {"LEDGER_TARGET": ledger_server.target}
    assert (await ledger("account", "create", account, env=env)).returncode == 0
    shown = await ledger("account", "show", account, "--json", env=env)
    assert parsed(shown)["account_id"] == account


async def test_entries_pages_and_all(ledger_server: RunningServer) -> None:
    t, account = ledger_server.target, new_id("ops")
    assert (await ledger("account", "create", account, "--target", t)).returncode == 0
    for amount in ("1", "2", "3"):  # a grant writes two entries, one of them on @issuance
        await ledger("grant", account, "crm_credits", amount, "--target", t)
    everything = parsed(await ledger("entries", account, "--all", "--json", "--target", t))
    total = len(everything["entries"])
    assert total >= 3 and everything["next_page_token"] == ""

    first = await ledger("entries", account, "--page-size", "2", "--target", t)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].split()[:3] == ["CREATED", "TRANSACTION", "ACCOUNT"]
    token = first.stdout.rsplit("--page-token ", 1)[1].split()[0]
    seen = 2
    page = parsed(
        await ledger("entries", account, "--page-size", "2", "--page-token", token, "--json",
                     "--target", t)
    )  # fmt: skip
    seen += len(page["entries"])
    while page["next_page_token"]:
        page = parsed(
            await ledger("entries", account, "--page-size", "100", "--page-token",
                         page["next_page_token"], "--json", "--target", t)
        )  # fmt: skip
        seen += len(page["entries"])
    assert seen == total
    newest = everything["entries"][0]
    assert newest["movement"] == "GRANT" and newest["amount"] in (3, -3)
