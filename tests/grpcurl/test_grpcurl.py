"""grpcurl against the live server: reflection, JSON round trips, errors with their reason."""

from __future__ import annotations

import uuid

from tests.conftest import RunningServer
from tests.grpcurl.tool import SERVICE, grpcurl


async def test_list_shows_ledger_health_and_reflection(ledger_server: RunningServer) -> None:
    result = await grpcurl(ledger_server.target, "list")
    services = set(result.stdout.split())
    assert result.returncode == 0, result.stderr
    assert {SERVICE, "grpc.health.v1.Health"} <= services
    assert services & {
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }, services


async def test_list_service_shows_every_rpc(ledger_server: RunningServer) -> None:
    result = await grpcurl(ledger_server.target, "list", SERVICE)
    methods = {line.strip() for line in result.stdout.splitlines()}
    expected = {
        "CreateAccount", "GetAccount", "Grant", "Reserve", "ReserveGroup", "Settle",
        "Release", "Refund", "Charge", "GetReservation", "GetReservationGroup",
        "GetBalance", "ListEntries",
    }  # fmt: skip
    assert {f"{SERVICE}.{m}" for m in expected} <= methods, result.stdout


async def test_describe_shows_messages_and_enums(ledger_server: RunningServer) -> None:
    service = await grpcurl(ledger_server.target, "describe", SERVICE)
    assert "rpc Reserve ( .creditledger.v1.ReserveRequest )" in service.stdout, service.stdout
    assert "NO_SIDE_EFFECTS" in service.stdout  # reads are marked safe to retry
    reservation = await grpcurl(ledger_server.target, "describe", "creditledger.v1.Reservation")
    assert "creditledger.v1.Reservation is a message" in reservation.stdout
    for text in ("enum State", "STATE_OPEN = 1", "int64 remaining = 8", "string group_id = 13"):
        assert text in reservation.stdout, reservation.stdout


async def test_grant_reserve_settle_refund_balance_round_trip_in_json(
    ledger_server: RunningServer,
) -> None:
    target, account = ledger_server.target, f"grpcurl-{uuid.uuid4().hex[:10]}"
    key = uuid.uuid4().hex

    async def call(method: str, **data: object) -> dict[str, object]:
        reply: dict[str, object] = (await grpcurl(target, f"{SERVICE}/{method}", data=data)).json()
        return reply

    await call("CreateAccount", account_id=account)
    grant = await call(
        "Grant", account_id=account, asset="crm_credits", amount="30", idempotency_key=f"{key}-g"
    )
    # int64 travels as a JSON string, both ways.
    assert grant["balance"] == {
        "account_id": account, "asset": "crm_credits", "available": "30", "granted": "30",
        "version": "1", "spendable": "30",
    }, grant  # fmt: skip
    reserve = await call(
        "Reserve", account_id=account, asset="crm_credits", amount="10", idempotency_key=f"{key}-r"
    )
    reservation = reserve["reservation"]
    assert isinstance(reservation, dict)
    rid = reservation["reservation_id"]
    assert reservation["state"] == "STATE_OPEN" and reservation["amount"] == "10"
    settle = await call(
        "Settle", reservation_id=rid, amount="6", final=True, idempotency_key=f"{key}-s"
    )
    assert settle["reservation"]["state"] == "STATE_CLOSED"  # type: ignore[index]
    refund = await call(
        "Refund", reservation_id=rid, amount="2", reason="failed", idempotency_key=f"{key}-f"
    )
    assert refund["reservation"]["refunded"] == "2"  # type: ignore[index]
    balance = await call("GetBalance", account_id=account, asset="crm_credits")
    b = balance["balance"]
    assert isinstance(b, dict)
    assert (b["available"], b["granted"], b["settled"], b["refunded"]) == ("26", "30", "6", "2")
    assert "reserved" not in b  # proto3 JSON leaves zeros out


async def test_replay_shows_the_trailer(ledger_server: RunningServer) -> None:
    account, key = f"grpcurl-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    await grpcurl(ledger_server.target, f"{SERVICE}/CreateAccount", data={"account_id": account})
    data = {"account_id": account, "asset": "email_opens", "amount": "5", "idempotency_key": key}
    first = await grpcurl(ledger_server.target, f"{SERVICE}/Grant", data=data, verbose=True)
    again = await grpcurl(ledger_server.target, f"{SERVICE}/Grant", data=data, verbose=True)
    assert "idempotent-replayed: true" not in first.stdout, first.stdout
    assert "idempotent-replayed: true" in again.stdout, again.stdout
    assert '"available": "5"' in again.stdout  # replayed, not applied twice


async def test_error_shows_error_info_reason_and_exit_code(ledger_server: RunningServer) -> None:
    missing = f"nobody-{uuid.uuid4().hex[:8]}"
    result = await grpcurl(
        ledger_server.target, f"{SERVICE}/GetAccount", data={"account_id": missing}
    )
    assert result.returncode == 64 + 5, (result.returncode, result.stderr)  # 64 + NOT_FOUND
    assert "Code: NotFound" in result.stderr
    assert "type.googleapis.com/google.rpc.ErrorInfo" in result.stderr
    assert '"reason":"ACCOUNT_NOT_FOUND"' in result.stderr.replace(" ", "")
    assert '"domain":"creditledger.v1"' in result.stderr.replace(" ", "")


async def test_invalid_argument_shows_field_violations(ledger_server: RunningServer) -> None:
    data = {"account_id": "x", "asset": "Not An Asset", "amount": "0", "idempotency_key": "k"}
    result = await grpcurl(ledger_server.target, f"{SERVICE}/Grant", data=data)
    assert result.returncode == 64 + 3, (result.returncode, result.stderr)  # INVALID_ARGUMENT
    flat = result.stderr.replace(" ", "")
    assert '"reason":"INVALID_ARGUMENT"' in flat
    assert "google.rpc.BadRequest" in flat
    assert '"field":"asset"' in flat and '"field":"amount"' in flat, result.stderr
