"""Issue 23, part 1: where a lot's credits came from (category, cost basis),
the spend order that takes them, and refunds going back the way they came.
Through the real stubs, on a server whose clock moves only when the test says."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import timedelta

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger_client import SyncLedgerClient
from google.protobuf import duration_pb2, timestamp_pb2

from ledger.domain import codec, limits
from ledger.domain.model import Lot
from ledger.storage.postgres import _LOT_COLS, _SPEND_ORDER
from tests.support.manual_server import ServerThread
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent

ASSET = "crm_credits"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    s = ServerThread(database_url)
    yield s
    s.close()


def key() -> str:
    return uuid.uuid4().hex


def account(s: ServerThread) -> str:
    acct = f"prov-{uuid.uuid4().hex[:12]}"
    s.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
    return acct


def at(s: ServerThread, days: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(s.clock.now() + timedelta(days=days))
    return out


def grant(s: ServerThread, acct: str, amount: int, **fields: object) -> pb.Lot:
    req = pb.GrantRequest(account_id=acct, asset=ASSET, amount=amount, idempotency_key=key())
    for name, value in fields.items():
        if isinstance(value, timestamp_pb2.Timestamp):
            getattr(req, name).CopyFrom(value)
        else:
            setattr(req, name, value)
    resp: pb.GrantResponse = s.stub.Grant(req)
    return resp.lot


def charge(s: ServerThread, acct: str, amount: int) -> pb.ChargeResponse:
    resp: pb.ChargeResponse = s.stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=amount, idempotency_key=key())
    )
    return resp


def lots(s: ServerThread, acct: str) -> list[pb.Lot]:
    return list(
        s.stub.GetBalance(
            pb.GetBalanceRequest(account_id=acct, asset=ASSET, include_lots=True)
        ).lots
    )


def remaining_by_source(s: ServerThread, acct: str) -> dict[str, int]:
    return {lot.source: lot.remaining for lot in lots(s, acct)}


def test_grant_records_category_and_cost_basis_and_get_balance_shows_them(
    server: ServerThread,
) -> None:
    acct = account(server)
    made = grant(
        server,
        acct,
        1000,
        source="pack-1000",
        category="paid",
        unit_cost_micros=12_500,
        cost_currency="EUR",
    )
    assert (made.category, made.unit_cost_micros, made.cost_currency) == ("paid", 12_500, "EUR")
    grant(server, acct, 50, source="welcome", category="promotional")
    grant(server, acct, 7, source="partner", category="x_partner_gift")
    grant(server, acct, 3, source="legacy")  # no category: paid, no cost basis
    shown = {lot.source: lot for lot in lots(server, acct)}
    assert shown["pack-1000"].category == "paid"
    assert shown["pack-1000"].HasField("unit_cost_micros")
    assert (shown["pack-1000"].unit_cost_micros, shown["pack-1000"].cost_currency) == (
        12_500,
        "EUR",
    )
    assert shown["welcome"].category == "promotional"
    assert not shown["welcome"].HasField("unit_cost_micros")
    assert shown["partner"].category == "x_partner_gift"
    assert (shown["legacy"].category, shown["legacy"].cost_currency) == ("paid", "")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"category": "bonus"}, "category"),
        ({"category": "x_"}, "category"),
        ({"category": "X_caps"}, "category"),
        ({"unit_cost_micros": 5}, "unit_cost_micros"),
        ({"unit_cost_micros": 5, "cost_currency": "eur"}, "cost_currency"),
        ({"cost_currency": "EUR"}, "cost_currency"),
        ({"unit_cost_micros": -1, "cost_currency": "EUR"}, "unit_cost_micros"),
        (
            {"unit_cost_micros": limits.UNIT_COST_MICROS_MAX + 1, "cost_currency": "EUR"},
            "unit_cost_micros",
        ),
    ],
)
def test_bad_provenance_is_invalid_argument_naming_the_field(
    server: ServerThread, fields: dict[str, object], field: str
) -> None:
    acct = account(server)
    with pytest.raises(grpc.RpcError) as err:
        grant(server, acct, 1, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "INVALID_ARGUMENT"
    assert field in (err.value.details() or "")


def test_the_category_is_part_of_the_idempotency_fingerprint(server: ServerThread) -> None:
    acct = account(server)
    k = key()
    req = pb.GrantRequest(account_id=acct, asset=ASSET, amount=5, idempotency_key=k)
    first = server.stub.Grant(req)
    assert server.stub.Grant(req).lot.lot_id == first.lot.lot_id  # a replay
    with pytest.raises(grpc.RpcError) as err:
        server.stub.Grant(
            pb.GrantRequest(
                account_id=acct, asset=ASSET, amount=5, idempotency_key=k, category="promotional"
            )
        )
    assert error_info(err.value).reason == "IDEMPOTENCY_KEY_REUSED"
    # "paid" is the default: the same request as no category at all.
    same = pb.GrantRequest(
        account_id=acct, asset=ASSET, amount=5, idempotency_key=k, category="paid"
    )
    assert server.stub.Grant(same).lot.lot_id == first.lot.lot_id


def test_spend_order_priority_expiry_then_promotional_allowance_paid_then_oldest(
    server: ServerThread,
) -> None:
    acct = account(server)
    end = at(server, 30)
    # Granted in the reverse of the order they must be spent in.
    grant(server, acct, 10, source="paid-never", category="paid")
    grant(server, acct, 10, source="paid", category="paid", expires_at=end)
    grant(server, acct, 10, source="allowance", category="allowance", expires_at=end)
    grant(server, acct, 10, source="promo-later", category="promotional", expires_at=end)
    server.advance(timedelta(seconds=-1))  # an older promotional lot, same expiry
    grant(server, acct, 10, source="promo-older", category="promotional", expires_at=end)
    server.advance(timedelta(seconds=1))
    grant(server, acct, 10, source="paid-sooner", category="paid", expires_at=at(server, 29))
    grant(server, acct, 10, source="priority", category="paid", priority=1, expires_at=end)
    order = []
    for _ in range(7):
        before = remaining_by_source(server, acct)
        charge(server, acct, 10)
        after = remaining_by_source(server, acct)
        (spent,) = [src for src in before if before[src] != after.get(src, 0)]
        order.append(spent)
    assert order == [
        "priority",
        "paid-sooner",
        "promo-older",
        "promo-later",
        "allowance",
        "paid",
        "paid-never",
    ]


def test_refund_goes_back_to_the_lots_spent_from_in_reverse_order(server: ServerThread) -> None:
    acct = account(server)
    end = at(server, 30)
    grant(server, acct, 4, source="promo", category="promotional", expires_at=end)
    grant(server, acct, 4, source="allowance", category="allowance", expires_at=end)
    grant(server, acct, 10, source="paid", category="paid", unit_cost_micros=9, cost_currency="USD")
    c = charge(server, acct, 12)  # 4 promo, 4 allowance, 4 paid
    assert remaining_by_source(server, acct) == {"paid": 6}
    server.stub.Refund(
        pb.RefundRequest(
            reservation_id=c.reservation.reservation_id, amount=6, idempotency_key=key()
        )
    )
    # Last drawn, first given back: paid gets its 4, then allowance 2; promo nothing.
    assert remaining_by_source(server, acct) == {"paid": 10, "allowance": 2}
    shown = {lot.source: lot for lot in lots(server, acct)}
    assert shown["allowance"].expires_at == end  # its own expiry kept


def test_refund_into_an_expired_lot_keeps_its_cost_basis(server: ServerThread) -> None:
    acct = account(server)
    grant(
        server,
        acct,
        5,
        source="pack",
        category="paid",
        unit_cost_micros=20_000,
        cost_currency="USD",
        expires_at=at(server, 1),
    )
    c = charge(server, acct, 5)
    server.advance(timedelta(days=2))
    server.stub.Refund(
        pb.RefundRequest(
            reservation_id=c.reservation.reservation_id, amount=2, idempotency_key=key()
        )
    )
    (lot,) = lots(server, acct)
    assert (lot.source, lot.category, lot.remaining) == ("refund", "refund", 2)
    assert (lot.unit_cost_micros, lot.cost_currency) == (20_000, "USD")


# ---------------------------------------------------------------- SQL order = Python order


async def _sql_and_python_order(url: str, acct: str) -> tuple[list[str], list[str]]:
    conn = await asyncpg.connect(url)
    try:
        order = (
            f"SELECT to_jsonb(l) FROM (SELECT {_LOT_COLS} FROM lots"  # noqa: S608 - constants
            " WHERE account_id = $1 AND asset = $2 AND remaining > 0"
            f" ORDER BY {_SPEND_ORDER}) AS l"
        )
        rows = await conn.fetch(order, acct, ASSET)
    finally:
        await conn.close()
    found = [codec.lot_from(json.loads(r[0])) for r in rows]
    return [lot.lot_id for lot in found], [lot.lot_id for lot in sorted(found, key=Lot.spend_order)]


def _mixed_lots(s: ServerThread, acct: str, count: int, seed: int) -> None:
    """Lots that tie on every key but one, in every combination, granted in a
    random order, some at the same instant (equal created_at: the id decides)."""
    rng = random.Random(seed)
    categories = ["paid", "promotional", "allowance", "x_gift", "paid"]
    ten = timedelta(days=10)
    # Equal expiries, and one a microsecond later.
    expiries = [None, ten, ten, 2 * ten, ten + timedelta(microseconds=1)]
    base = s.clock.now()
    for i in range(count):
        fields: dict[str, object] = {
            "source": f"lot-{i}",
            "category": rng.choice(categories),
            "priority": rng.choice([50, 100, 100]),
        }
        life = rng.choice(expiries)
        if life is not None:
            expires = timestamp_pb2.Timestamp()
            expires.FromDatetime(base + life)
            fields["expires_at"] = expires
        grant(s, acct, 1, **fields)
        if rng.random() < 0.5:
            s.advance(timedelta(microseconds=rng.choice([1, 1000])))


def test_sql_spend_order_equals_python_spend_order(server: ServerThread) -> None:
    acct = account(server)
    _mixed_lots(server, acct, 60, seed=23)
    sql, python = server.run(_sql_and_python_order(server.database_url, acct))
    assert len(sql) == 60
    assert sql == python


def _one_group_lots(s: ServerThread, acct: str, count: int) -> None:
    """Lots equal in priority and expiry, of random categories, oldest first:
    only the category's rank puts them in order before their age does."""
    rng = random.Random(5)
    expires = at(s, 10)
    for i in range(count):
        grant(
            s,
            acct,
            1,
            source=f"lot-{i}",
            category=rng.choice(["paid", "promotional", "allowance"]),
            expires_at=expires,
        )
        s.advance(timedelta(milliseconds=1))


@pytest.mark.parametrize("lots_of", [_one_group_lots, _mixed_lots])
def test_a_spend_past_the_lots_loaded_first_takes_the_python_order(
    server: ServerThread, lots_of: object
) -> None:
    """The batch loads the first LOTS_LOADED_FIRST lots by SQL; the rules draw
    them in Python's order and stop at the last loaded. Were the two orders
    different, the lots spent would not be the first ones in Python's order
    (shown failing with the SQL ordered as before version 13)."""
    count = limits.LOTS_LOADED_FIRST + 12
    acct = account(server)
    if lots_of is _mixed_lots:
        _mixed_lots(server, acct, count, seed=7)
    else:
        _one_group_lots(server, acct, count)
    _, python = server.run(_sql_and_python_order(server.database_url, acct))
    spend = limits.LOTS_LOADED_FIRST - 5
    charge(server, acct, spend)
    left = {lot.lot_id for lot in lots(server, acct)}
    assert left == set(python[spend:])
    charge(server, acct, 10)  # past the horizon: the writer reloads the pair whole
    left = {lot.lot_id for lot in lots(server, acct)}
    assert left == set(python[spend + 10 :])


# ---------------------------------------------------------------- VoidGrant


def void(s: ServerThread, lot_id: str, amount: int = 0, k: str = "") -> pb.VoidGrantResponse:
    resp: pb.VoidGrantResponse = s.stub.VoidGrant(
        pb.VoidGrantRequest(
            lot_id=lot_id, amount=amount, reason="refunded purchase", idempotency_key=k or key()
        )
    )
    return resp


def entries(s: ServerThread, acct: str) -> list[pb.Entry]:
    return list(s.stub.ListEntries(pb.ListEntriesRequest(account_id=acct, asset=ASSET)).entries)


async def _voided_total(url: str, asset: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        total: int = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM entries WHERE account_id = '@voided' AND asset = $1",
            asset,
        )
    finally:
        await conn.close()
    return total


def test_void_takes_back_part_then_all_of_the_unspent_remainder(server: ServerThread) -> None:
    acct = account(server)
    paid = grant(server, acct, 100, source="pack", unit_cost_micros=10_000, cost_currency="USD")
    server.advance(timedelta(seconds=1))
    grant(server, acct, 50, source="other")
    charge(server, acct, 30)  # from "pack" (older, both paid, never expire)
    before_voided = server.run(_voided_total(server.database_url, ASSET))
    v = void(server, paid.lot_id, 20)
    assert (v.voided, v.lot.remaining, v.lot.amount, v.balance.available) == (20, 50, 100, 100)
    k = key()
    v = void(server, paid.lot_id, 0, k)  # all that is left
    assert (v.voided, v.lot.remaining, v.balance.available) == (50, 0, 50)
    again = void(server, paid.lot_id, 0, k)  # a retry replays, voids nothing more
    assert (again.voided, again.balance.available) == (50, 50)
    assert remaining_by_source(server, acct) == {"other": 50}
    voids = [e for e in entries(server, acct) if e.movement == pb.Entry.MOVEMENT_VOID]
    assert sorted(e.amount for e in voids) == [-50, -20]
    assert {e.lot_id for e in voids} == {paid.lot_id}
    # The system account's total is derived from its entries (it has no balance row).
    assert server.run(_voided_total(server.database_url, ASSET)) - before_voided == 70
    with pytest.raises(grpc.RpcError) as err:
        void(server, paid.lot_id, 0)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "AMOUNT_EXCEEDS_UNSPENT"
    assert error_info(err.value).metadata["unspent"] == "0"


def test_held_credits_cannot_be_voided_and_the_reason_says_how_many(
    server: ServerThread,
) -> None:
    acct = account(server)
    lot = grant(server, acct, 10)
    server.stub.Reserve(
        pb.ReserveRequest(account_id=acct, asset=ASSET, amount=7, idempotency_key=key())
    )
    with pytest.raises(grpc.RpcError) as err:
        void(server, lot.lot_id, 5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info.reason == "CREDITS_HELD"
    assert (info.metadata["held"], info.metadata["unspent"]) == ("7", "3")
    assert "7 more are held" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        void(server, lot.lot_id, 11)  # more than the lot ever had left
    assert error_info(err.value).reason == "AMOUNT_EXCEEDS_UNSPENT"
    assert void(server, lot.lot_id, 0).voided == 3  # "all": the unheld remainder


def test_a_hold_that_expired_no_longer_blocks_a_void(server: ServerThread) -> None:
    acct = account(server)
    lot = grant(server, acct, 10)
    server.stub.Reserve(
        pb.ReserveRequest(
            account_id=acct,
            asset=ASSET,
            amount=10,
            idempotency_key=key(),
            ttl=duration_pb2.Duration(seconds=60),
        )
    )
    server.advance(timedelta(seconds=60))  # expired, not swept: catch_up sees it
    assert void(server, lot.lot_id, 0).voided == 10


def test_an_expired_lot_has_nothing_to_void(server: ServerThread) -> None:
    acct = account(server)
    lot = grant(server, acct, 10, expires_at=at(server, 1))
    server.advance(timedelta(days=1))
    with pytest.raises(grpc.RpcError) as err:
        void(server, lot.lot_id, 0)
    assert error_info(err.value).reason == "AMOUNT_EXCEEDS_UNSPENT"


def test_void_of_an_unknown_lot_is_not_found_and_a_bad_id_invalid(server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as err:
        void(server, str(uuid.uuid4()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err.value).reason == "LOT_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as err:
        void(server, "not-a-lot")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lot_id" in (err.value.details() or "")


def test_zz_the_ledger_verifies_after_every_test_of_this_module(server: ServerThread) -> None:
    """Runs last (pytest keeps file order): voids, refunds and lots of every
    category leave a ledger `ledger verify` proves consistent."""
    server.sweep()
    server.run(assert_ledger_consistent(server.database_url))


def test_the_python_client_grants_and_shows_provenance(server: ServerThread) -> None:
    acct = account(server)
    with SyncLedgerClient(f"127.0.0.1:{server.app.port}") as client:
        made = client.grant(
            acct, ASSET, 7, category="promotional", unit_cost_micros=0, cost_currency="USD"
        )
        assert (made.lot.category, made.lot.unit_cost_micros, made.lot.cost_currency) == (
            "promotional",
            0,
            "USD",
        )
        plain = client.grant(acct, ASSET, 3)
        assert (plain.lot.category, plain.lot.unit_cost_micros) == ("paid", None)
