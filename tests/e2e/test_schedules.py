"""Issue 23, part 2: grant schedules, through the real stubs, on a server whose
clock and sweeper move only when the test says. Every value is written by hand."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ledger.app import App
from ledger.config import Config
from ledger.domain import limits
from ledger.storage.verify import verify
from tests.support.manual_server import ServerThread
from tests.support.rpc import error_info
from tests.support.verify import assert_ledger_consistent

ASSET = "crm_credits"
MONTHLY = pb.GrantSchedule.PERIOD_UNIT_MONTH

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(database_url: str) -> Iterator[ServerThread]:
    """A server of its own per test: each test moves the clock from 2030-01-01."""
    s = ServerThread(database_url)
    yield s
    s.close()


def key() -> str:
    return uuid.uuid4().hex


def ts(t: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def account(s: ServerThread) -> str:
    acct = f"sched-{uuid.uuid4().hex[:12]}"
    s.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
    return acct


def monthly(s: ServerThread, acct: str, amount: int, **fields: object) -> pb.GrantSchedule:
    req = pb.CreateGrantScheduleRequest(
        account_id=acct,
        asset=ASSET,
        amount=amount,
        period_unit=MONTHLY,
        period_count=1,
        idempotency_key=str(fields.pop("idempotency_key", key())),
    )
    for name, value in fields.items():
        if isinstance(value, pb.Rollover | timestamp_pb2.Timestamp | duration_pb2.Duration):
            getattr(req, name).CopyFrom(value)
        else:
            setattr(req, name, value)
    resp: pb.CreateGrantScheduleResponse = s.stub.CreateGrantSchedule(req)
    return resp.schedule


def available(s: ServerThread, acct: str) -> int:
    got = s.stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET))
    return int(got.balance.available)


def lots(s: ServerThread, acct: str) -> list[tuple[str, int | None, int, int]]:
    """(category, period, amount, remaining) of each live lot, in spend order."""
    got = s.stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET, include_lots=True))
    return [
        (lot.category, lot.period if lot.HasField("period") else None, lot.amount, lot.remaining)
        for lot in got.lots
    ]


def charge(s: ServerThread, acct: str, amount: int) -> None:
    s.stub.Charge(
        pb.ChargeRequest(account_id=acct, asset=ASSET, amount=amount, idempotency_key=key())
    )


def totals(s: ServerThread, acct: str) -> dict[int, int]:
    """Sum of the account's entries by movement (system accounts excluded)."""
    out: dict[int, int] = {}
    token = ""
    while True:
        page = s.stub.ListEntries(
            pb.ListEntriesRequest(account_id=acct, asset=ASSET, page_size=1000, page_token=token)
        )
        for e in page.entries:
            out[e.movement] = out.get(e.movement, 0) + e.amount
        token = page.next_page_token
        if not token:
            return out


async def _period_rows(url: str, schedule_id: str) -> list[tuple[int, str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT period, category, amount FROM lots WHERE schedule_id = $1::uuid"
            " ORDER BY period, category",
            schedule_id,
        )
    finally:
        await conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


def half() -> pb.Rollover:
    return pb.Rollover(cap_percent=50)


def test_the_period_is_there_at_the_instant_it_starts_with_its_rollover(
    server: ServerThread,
) -> None:
    acct = account(server)
    s = monthly(server, acct, 100, rollover=half())
    assert (s.first_period, s.next_period) == (0, 1)
    assert s.next_period_start.ToDatetime(tzinfo=UTC) == utc(2030, 2, 1)
    assert available(server, acct) == 100
    charge(server, acct, 30)
    server.advance(timedelta(days=31))  # exactly Feb 1, 00:00: nothing has run
    # January's 70 left: 50 rolled over (50% of 100), 20 expired; February's 100.
    assert available(server, acct) == 150
    assert lots(server, acct) == [("rollover", 0, 50, 50), ("allowance", 1, 100, 100)]
    charge(server, acct, 60)  # the rollover first (same expiry, rollover before allowance)
    assert lots(server, acct) == [("allowance", 1, 100, 90)]
    server.advance(timedelta(microseconds=-1))
    # A microsecond before March: still February.
    server.advance(timedelta(days=28))
    assert available(server, acct) == 90
    server.advance(timedelta(microseconds=1))  # Mar 1
    assert available(server, acct) == 50 + 100
    server.sweep()
    moved = totals(server, acct)
    assert moved[pb.Entry.MOVEMENT_GRANT] == 300
    assert moved[pb.Entry.MOVEMENT_SETTLE] == -90
    assert moved[pb.Entry.MOVEMENT_LOT_EXPIRY] == -(20 + 40)
    assert moved[pb.Entry.MOVEMENT_ROLLOVER] == 0  # out of one lot, into another
    rows = server.run(_period_rows(server.database_url, s.schedule_id))
    assert rows == [
        (0, "allowance", 100),
        (0, "rollover", 50),
        (1, "allowance", 100),
        (1, "rollover", 50),
        (2, "allowance", 100),
    ]
    server.run(assert_ledger_consistent(server.database_url))


def test_an_outage_of_three_periods_issues_and_writes_off_each_visibly(
    server: ServerThread,
) -> None:
    acct = account(server)
    s = monthly(server, acct, 100, rollover=pb.Rollover(cap_amount=30))
    charge(server, acct, 10)
    server.advance(utc(2030, 5, 15) - server.clock.now())  # Feb, Mar, Apr missed
    # Jan: 90 left, 30 rolled into Feb (to Mar 1), 60 expired. Feb: 100 + 30,
    # 30 of Feb's own rolled into Mar, 70 + 30 expired. Mar: 100 + 30; Apr: 100 + 30;
    # May: 100 and April's rollover 30.
    assert available(server, acct) == 130
    got = server.stub.GetGrantSchedule(pb.GetGrantScheduleRequest(schedule_id=s.schedule_id))
    assert got.schedule.next_period == 5
    server.sweep()
    moved = totals(server, acct)
    assert moved[pb.Entry.MOVEMENT_GRANT] == 500
    assert moved[pb.Entry.MOVEMENT_LOT_EXPIRY] == -(60 + 100 + 100 + 100)
    rows = server.run(_period_rows(server.database_url, s.schedule_id))
    assert [r for r in rows if r[1] == "allowance"] == [(n, "allowance", 100) for n in range(5)]
    assert [r for r in rows if r[1] == "rollover"] == [(n, "rollover", 30) for n in range(4)]
    server.run(assert_ledger_consistent(server.database_url))


def test_a_backlog_longer_than_one_batch_is_issued_in_bounded_batches(
    server: ServerThread,
) -> None:
    acct = account(server)
    daily = server.stub.CreateGrantSchedule(
        pb.CreateGrantScheduleRequest(
            account_id=acct,
            asset=ASSET,
            amount=5,
            period_unit=pb.GrantSchedule.PERIOD_UNIT_DAY,
            period_count=1,
            idempotency_key=key(),
        )
    ).schedule
    days = limits.SCHEDULE_PERIODS_PER_BATCH_MAX * 2 + 10
    server.advance(timedelta(days=days))
    assert available(server, acct) == 5  # a read issues the backlog in memory
    charge(server, acct, 5)  # the writer first issues it in bounded batches
    got = server.stub.GetGrantSchedule(pb.GetGrantScheduleRequest(schedule_id=daily.schedule_id))
    assert got.schedule.next_period == days + 1
    rows = server.run(_period_rows(server.database_url, daily.schedule_id))
    assert [r[0] for r in rows] == list(range(days + 1))
    server.run(assert_ledger_consistent(server.database_url))


def test_a_schedule_created_mid_period_gets_that_period_at_once_and_none_before(
    server: ServerThread,
) -> None:
    acct = account(server)
    server.advance(timedelta(days=9, hours=12))  # Jan 10, noon
    s = monthly(server, acct, 100, anchor=ts(utc(2029, 11, 30)))
    # Periods: Nov 30, Dec 30, Jan 30 (clamped from the 30th): Jan 10 is in period 1.
    assert (s.first_period, s.next_period) == (1, 2)
    assert s.next_period_start.ToDatetime(tzinfo=UTC) == utc(2030, 1, 30)
    assert lots(server, acct) == [("allowance", 1, 100, 100)]


def test_create_replays_cancel_stops_and_voids(server: ServerThread) -> None:
    acct = account(server)
    k = key()
    first = monthly(server, acct, 100, idempotency_key=k)
    again = monthly(server, acct, 100, idempotency_key=k)
    assert again.schedule_id == first.schedule_id
    assert available(server, acct) == 100  # issued once
    with pytest.raises(grpc.RpcError) as err:
        monthly(server, acct, 200, idempotency_key=k)
    assert error_info(err.value).reason == "IDEMPOTENCY_KEY_REUSED"
    charge(server, acct, 40)
    server.advance(timedelta(days=3))
    cancelled = server.stub.CancelGrantSchedule(
        pb.CancelGrantScheduleRequest(
            schedule_id=first.schedule_id, void_remainder=True, idempotency_key=key()
        )
    )
    assert cancelled.schedule.state == pb.GrantSchedule.STATE_CANCELLED
    assert not cancelled.schedule.HasField("next_period_start")
    assert cancelled.balance.available == 0
    server.advance(timedelta(days=60))
    assert available(server, acct) == 0  # no period after the cancel
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GetGrantSchedule(pb.GetGrantScheduleRequest(schedule_id=str(uuid.uuid4())))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err.value).reason == "SCHEDULE_NOT_FOUND"
    server.run(assert_ledger_consistent(server.database_url))


def test_bad_schedules_are_invalid_argument_naming_the_field(server: ServerThread) -> None:
    acct = account(server)
    cases: list[tuple[dict[str, object], str]] = [
        ({"period_count": 0}, "period_count"),
        ({"period_count": 121}, "period_count"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"category": "bonus"}, "category"),
        ({"rollover": pb.Rollover(cap_percent=101)}, "rollover.cap_percent"),
        ({"end": ts(utc(2029, 1, 1))}, "end"),
        ({"category": "rollover"}, "category"),
        # A monthly lot may live at most 12 periods (SCHEDULE_LOT_LIFE_PERIODS_MAX).
        ({"lot_life": duration_pb2.Duration(seconds=13 * 31 * 86400)}, "lot_life"),
        (
            {"rollover": pb.Rollover(life=duration_pb2.Duration(seconds=13 * 31 * 86400))},
            "rollover.life",
        ),
    ]
    for fields, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            monthly(server, acct, 100, **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field in (err.value.details() or ""), (fields, err.value.details())


async def _verify_after(url: str, sql: str, schedule_id: str) -> set[str]:
    """The checks `ledger verify` fails after `sql` (run as the owner, on purpose)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, schedule_id)
    finally:
        await conn.close()
    return set((await verify(url)).violations)


def test_verify_proves_each_period_once_and_rollover_within_its_cap(server: ServerThread) -> None:
    acct = account(server)
    s = monthly(server, acct, 100, rollover=pb.Rollover(cap_percent=50))
    server.advance(timedelta(days=31))
    assert available(server, acct) == 150
    server.sweep()
    server.run(assert_ledger_consistent(server.database_url))
    url, sid = server.database_url, s.schedule_id
    broken = server.run(
        _verify_after(
            url, "UPDATE grant_schedules SET next_period = 3 WHERE schedule_id = $1::uuid", sid
        )
    )
    assert "schedule_periods_issued_once" in broken
    server.run(
        _verify_after(
            url, "UPDATE grant_schedules SET next_period = 2 WHERE schedule_id = $1::uuid", sid
        )
    )
    # A rollover above its cap (50% of 100), balanced by hand so that only the cap is wrong.
    broken = server.run(
        _verify_after(
            url,
            "UPDATE lots SET amount = 60 WHERE schedule_id = $1::uuid AND category = 'rollover'",
            sid,
        )
    )
    assert broken == {"rollover_within_cap"}


# ---------------------------------------------------------------- the proofs


class Replica:
    """One more App on the manual server's database, clock and event loop."""

    def __init__(self, s: ServerThread) -> None:
        self.s = s
        self.app = App(
            Config(
                listen="127.0.0.1:0",
                database_url=s.database_url,
                metrics_listen="",
                sweep_interval_s=86400.0,
                drain_s=0.5,
            ),
            clock=s.clock,
        )
        s.run(self.app.start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.stub = ledger_pb2_grpc.LedgerServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.s.run(self.app.stop())


def _month_starts() -> list[datetime]:
    return [utc(2030 + (m // 12), m % 12 + 1, 1) for m in range(15)]


def test_fourteen_months_rollover_capped_at_half_restart_outage_two_replicas(
    server: ServerThread,
) -> None:
    """A monthly allowance of 1000 with rollover capped at 50%, 10 credits spent
    every day at noon through two replicas in turn, the first replica restarted
    on April 15, nothing at all running July to September. Values by hand:
    January spends 310 of its 1000: 500 rolls over, 190 expires. Every later
    month starts with 500 rolled over + 1000 and spends from the rollover first
    (same expiry, rollover before allowance), so its allowance is untouched:
    500 rolls over, 500 expires, and what the month did not spend of the
    rollover it received expires (all 500 in the outage months)."""
    a, b = Replica(server), Replica(server)
    replicas = [a, b]
    try:
        acct = f"sched-{uuid.uuid4().hex[:12]}"
        a.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
        sid = a.stub.CreateGrantSchedule(
            pb.CreateGrantScheduleRequest(
                account_id=acct,
                asset=ASSET,
                amount=1000,
                period_unit=MONTHLY,
                period_count=1,
                rollover=pb.Rollover(cap_percent=50),
                idempotency_key=key(),
            )
        ).schedule.schedule_id
        starts = _month_starts()
        spent_days = 0
        turn = 0
        for m in range(14):
            month_start = starts[m]
            server.advance(month_start - server.clock.now())
            stub = replicas[turn % 2].stub
            if m not in (6, 7, 8):  # July to September: nothing runs, nobody reads
                got = stub.GetBalance(
                    pb.GetBalanceRequest(account_id=acct, asset=ASSET, include_lots=True)
                )
                expected = (
                    [("allowance", 0, 1000, 1000)]
                    if m == 0
                    else [("rollover", m - 1, 500, 500), ("allowance", m, 1000, 1000)]
                )
                shown = [(x.category, x.period, x.amount, x.remaining) for x in got.lots]
                assert shown == expected, (month_start, shown)
                assert got.balance.available == (1000 if m == 0 else 1500), month_start
            day = month_start + timedelta(hours=12)
            while day < starts[m + 1]:
                if m not in (6, 7, 8):
                    server.advance(day - server.clock.now())
                    replicas[turn % 2].stub.Charge(
                        pb.ChargeRequest(
                            account_id=acct, asset=ASSET, amount=10, idempotency_key=key()
                        )
                    )
                    turn += 1
                    spent_days += 1
                if m == 3 and day.day == 15:  # restart the first replica mid-April
                    a.stop()
                    a = Replica(server)
                    replicas[0] = a
                day += timedelta(days=1)
        server.advance(starts[14] - server.clock.now())
        got = b.stub.GetBalance(pb.GetBalanceRequest(account_id=acct, asset=ASSET))
        assert got.balance.available == 1500
        assert spent_days == 332
        assert got.balance.settled == 3320
        assert got.balance.granted == 15 * 1000
        assert got.balance.expired == (190 + 13 * 500) + (13 * 500 - 3010)
        assert got.balance.granted == (
            got.balance.settled + got.balance.expired + got.balance.available
        )
        schedule = b.stub.GetGrantSchedule(pb.GetGrantScheduleRequest(schedule_id=sid)).schedule
        assert schedule.next_period == 15
        a.stub.Charge(  # written down: every period up to now
            pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
        rows = server.run(_period_rows(server.database_url, sid))
        assert [r for r in rows if r[1] == "allowance"] == [
            (n, "allowance", 1000) for n in range(15)
        ]
        assert [r for r in rows if r[1] == "rollover"] == [(n, "rollover", 500) for n in range(14)]
        server.run(assert_ledger_consistent(server.database_url))
    finally:
        for r in replicas:
            r.stop()


async def _settled_by_period(url: str, acct: str) -> list[tuple[datetime, int]]:
    """(instant, period of the lot) of every credit the account settled."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT e.created_at, l.period, -e.amount AS n FROM entries e JOIN lots l USING (lot_id)"
            " WHERE e.account_id = $1 AND e.movement = 'settle' AND e.bucket <> 'system'",
            acct,
        )
    finally:
        await conn.close()
    return [(r[0], r[1]) for r in rows for _ in range(r[2])]


def test_200_spends_racing_a_period_boundary_on_two_replicas(server: ServerThread) -> None:
    """60 credits a month. 200 charges of 1 race on two replicas while the clock
    reaches March 1 (when the 50th answer comes). Never a credit of February's
    allowance after its end, never one missed of March's: every credit settled
    before the boundary came from February's lot (at most 60 of them), and March
    gives exactly 60 (at least 134 charges were sent after the boundary)."""
    a, b = Replica(server), Replica(server)
    try:
        acct = f"race-{uuid.uuid4().hex[:12]}"
        a.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
        server.advance(utc(2030, 2, 1) - server.clock.now())
        a.stub.CreateGrantSchedule(
            pb.CreateGrantScheduleRequest(
                account_id=acct,
                asset=ASSET,
                amount=60,
                period_unit=MONTHLY,
                period_count=1,
                idempotency_key=key(),
            )
        )
        boundary = utc(2030, 3, 1)
        server.advance(boundary - timedelta(milliseconds=1) - server.clock.now())
        done = 0
        lock = threading.Lock()

        def spend(i: int) -> str:
            nonlocal done
            stub = (a, b)[i % 2].stub
            try:
                stub.Charge(
                    pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
                )
                outcome = "ok"
            except grpc.RpcError as err:
                outcome = error_info(err).reason
            with lock:
                done += 1
                if done == 50:
                    server.clock.t = boundary  # the boundary, mid-race
            return outcome

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(spend, range(200)))
        assert set(outcomes) <= {"ok", "INSUFFICIENT_CREDITS"}
        settled = server.run(_settled_by_period(server.database_url, acct))
        before = [p for t, p in settled if t < boundary]
        after = [p for t, p in settled if t >= boundary]
        assert set(before) <= {0} and len(before) <= 60
        assert set(after) == {1} and len(after) == 60
        assert outcomes.count("ok") == len(before) + 60
        server.run(assert_ledger_consistent(server.database_url))
    finally:
        a.stop()
        b.stop()


def test_crm_old_plan_monthly_email_quota_beside_purchased_credits(server: ServerThread) -> None:
    """The seed's CRM scenario (tests/e2e/test_lots.py, first test), with the
    quota as a schedule: it renews by itself, purchased credits are untouched
    by the renewal, and spend order takes the quota first (it expires first)."""
    acct = account(server)
    purchased = server.stub.Grant(
        pb.GrantRequest(
            account_id=acct,
            asset=ASSET,
            amount=1000,
            idempotency_key=key(),
            source="purchase",
            category="paid",
            unit_cost_micros=2_000,
            cost_currency="EUR",
        )
    ).lot
    monthly(server, acct, 300, category="allowance")
    charge(server, acct, 250)
    assert lots(server, acct) == [("allowance", 0, 300, 50), ("paid", None, 1000, 1000)]
    server.advance(timedelta(days=31))  # Feb 1: the quota renews, the 50 left expire
    assert lots(server, acct) == [("allowance", 1, 300, 300), ("paid", None, 1000, 1000)]
    charge(server, acct, 400)  # quota first, then purchased credits
    assert lots(server, acct) == [("paid", None, 1000, 900)]
    got = server.stub.GetBalance(
        pb.GetBalanceRequest(account_id=acct, asset=ASSET, include_lots=True)
    )
    (paid,) = got.lots
    assert (paid.lot_id, paid.unit_cost_micros, paid.cost_currency) == (
        purchased.lot_id,
        2_000,
        "EUR",
    )
    assert got.balance.granted == 1000 + 2 * 300
    assert got.balance.expired == 50
    server.sweep()
    server.run(assert_ledger_consistent(server.database_url))


def test_list_grant_schedules_pages_oldest_first_each_as_it_is_now(server: ServerThread) -> None:
    acct = account(server)
    made = []
    for amount in (10, 20, 30):
        made.append(monthly(server, acct, amount).schedule_id)
        server.advance(timedelta(seconds=1))
    server.advance(timedelta(days=40))  # Feb 10: period 1 due, nothing written yet
    first = server.stub.ListGrantSchedules(
        pb.ListGrantSchedulesRequest(account_id=acct, page_size=2)
    )
    assert [s.schedule_id for s in first.schedules] == made[:2]
    assert [s.next_period for s in first.schedules] == [2, 2]
    assert first.next_page_token
    second = server.stub.ListGrantSchedules(
        pb.ListGrantSchedulesRequest(account_id=acct, page_size=2, page_token=first.next_page_token)
    )
    assert [s.schedule_id for s in second.schedules] == made[2:]
    assert not second.next_page_token
    with pytest.raises(grpc.RpcError) as err:
        server.stub.ListGrantSchedules(
            pb.ListGrantSchedulesRequest(
                account_id=account(server), page_token=first.next_page_token
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        server.stub.ListGrantSchedules(pb.ListGrantSchedulesRequest(account_id="nobody-here"))
    assert error_info(err.value).reason == "ACCOUNT_NOT_FOUND"


def test_update_changes_amount_and_rollover_from_the_next_period_only(
    server: ServerThread,
) -> None:
    acct = account(server)
    s = monthly(server, acct, 100, rollover=pb.Rollover(cap_percent=50))
    server.advance(timedelta(days=10))  # Jan 11: period 0 issued with 100
    updated = server.stub.UpdateGrantSchedule(
        pb.UpdateGrantScheduleRequest(
            schedule_id=s.schedule_id,
            amount=400,
            rollover=pb.Rollover(cap_amount=10),
            idempotency_key=key(),
        )
    ).schedule
    assert (updated.amount, updated.terms_from_period) == (400, 1)
    assert updated.rollover.cap_amount == 10
    assert lots(server, acct) == [("allowance", 0, 100, 100)]  # January's stays 100
    server.advance(utc(2030, 2, 1) - server.clock.now())
    # January rolls over by its own terms (50% of 100); February gets 400.
    assert lots(server, acct) == [("rollover", 0, 50, 50), ("allowance", 1, 400, 400)]
    server.advance(utc(2030, 3, 1) - server.clock.now())
    # February's rollover by the new terms: at most 10.
    assert lots(server, acct) == [("rollover", 1, 10, 10), ("allowance", 2, 400, 400)]
    server.stub.UpdateGrantSchedule(
        pb.UpdateGrantScheduleRequest(
            schedule_id=s.schedule_id, remove_rollover=True, idempotency_key=key()
        )
    )
    server.advance(utc(2030, 4, 1) - server.clock.now())
    # Removed from the next period on: March still rolls over by its own terms.
    assert lots(server, acct) == [("rollover", 2, 10, 10), ("allowance", 3, 400, 400)]
    server.advance(utc(2030, 5, 1) - server.clock.now())
    assert lots(server, acct) == [("allowance", 4, 400, 400)]
    server.sweep()
    server.run(assert_ledger_consistent(server.database_url))
    with pytest.raises(grpc.RpcError) as err:
        server.stub.UpdateGrantSchedule(
            pb.UpdateGrantScheduleRequest(schedule_id=s.schedule_id, idempotency_key=key())
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_breakage_by_category_and_cost_basis_the_same_before_and_after_the_sweep(
    server: ServerThread,
) -> None:
    acct = account(server)
    server.stub.Grant(
        pb.GrantRequest(
            account_id=acct,
            asset=ASSET,
            amount=500,
            idempotency_key=key(),
            category="paid",
            unit_cost_micros=2_000,
            cost_currency="EUR",
            expires_at=ts(utc(2030, 1, 20)),
        )
    )
    server.stub.Grant(
        pb.GrantRequest(
            account_id=acct,
            asset=ASSET,
            amount=50,
            idempotency_key=key(),
            category="promotional",
            expires_at=ts(utc(2030, 1, 10)),
        )
    )
    monthly(server, acct, 100)
    # Spend order at Jan 1, soonest expiry first: promotional (Jan 10) 50, then
    # paid (Jan 20) 80; the allowance (Feb 1) untouched. At Feb 1: 420 paid
    # (cost 2,000 micros each) and 100 allowance were written off.
    charge(server, acct, 130)
    server.advance(utc(2030, 2, 1) - server.clock.now())
    expected = [
        ("allowance", "", None, 100, 0),
        ("paid", "EUR", 2_000, 420, 420 * 2_000),
    ]

    def breakage(**window: timestamp_pb2.Timestamp) -> list[tuple[str, str, int | None, int, int]]:
        got = server.stub.GetBreakage(pb.GetBreakageRequest(account_id=acct, asset=ASSET, **window))
        assert got.credits == sum(x.credits for x in got.lines)
        return [
            (
                x.category,
                x.cost_currency,
                x.unit_cost_micros if x.HasField("unit_cost_micros") else None,
                x.credits,
                x.cost_micros,
            )
            for x in got.lines
        ]

    assert breakage() == expected  # nothing written down yet: catch_up's view
    server.sweep()
    assert breakage() == expected  # written down: the same answer
    assert breakage(start=ts(utc(2030, 1, 15)), end=ts(utc(2030, 1, 31))) == [expected[1]]
    assert breakage(end=ts(utc(2030, 1, 15))) == []
    server.run(assert_ledger_consistent(server.database_url))
    # A write-off of the paid lot dated before its expiry (Jan 20).
    broken = server.run(
        _verify_after(
            server.database_url,
            "WITH l AS (SELECT lot_id, account_id, asset FROM lots"
            "           WHERE account_id = $1 AND category = 'paid'),"
            " t AS (SELECT gen_random_uuid() AS id)"
            " INSERT INTO entries (transaction_id, account_id, asset, amount, movement, bucket,"
            " lot_id, created_at)"
            " SELECT t.id, v.acct, l.asset, v.n, 'lot_expiry', v.bucket, l.lot_id,"
            " '2030-01-05T00:00:00Z' FROM l, t, LATERAL (VALUES (l.account_id, -1, 'available'),"
            " ('@expired', 1, 'system')) AS v(acct, n, bucket)",
            acct,
        )
    )
    assert "breakage_after_expiry" in broken
    assert "breakage_is_lot_write_offs" not in broken  # balanced: both sides, one lot


def test_a_create_retried_on_two_replicas_and_a_clock_jumping_back_issue_once(
    server: ServerThread,
) -> None:
    a, b = Replica(server), Replica(server)
    try:
        acct = f"once-{uuid.uuid4().hex[:12]}"
        a.stub.CreateAccount(pb.CreateAccountRequest(account_id=acct))
        k = key()
        request = pb.CreateGrantScheduleRequest(
            account_id=acct,
            asset=ASSET,
            amount=100,
            period_unit=MONTHLY,
            period_count=1,
            idempotency_key=k,
        )
        with ThreadPoolExecutor(8) as pool:
            made = list(
                pool.map(lambda i: (a, b)[i % 2].stub.CreateGrantSchedule(request), range(16))
            )
        assert len({m.schedule.schedule_id for m in made}) == 1
        sid = made[0].schedule.schedule_id
        server.advance(timedelta(days=31))  # Feb 1: period 1
        charge_on = (a, b)
        for i in range(4):
            charge_on[i % 2].stub.Charge(
                pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
            )
        server.advance(timedelta(days=-3))  # the clock jumps back into January
        charge_on[0].stub.Charge(
            pb.ChargeRequest(account_id=acct, asset=ASSET, amount=1, idempotency_key=key())
        )
        server.advance(timedelta(days=3))
        rows = server.run(_period_rows(server.database_url, sid))
        assert rows == [(0, "allowance", 100), (1, "allowance", 100)]
        server.run(assert_ledger_consistent(server.database_url))
    finally:
        a.stop()
        b.stop()


def test_a_schedule_anchored_ahead_issues_nothing_until_its_anchor_then_shows_in_get_account(
    server: ServerThread,
) -> None:
    acct = account(server)
    s = monthly(server, acct, 100, anchor=ts(utc(2030, 1, 15)))
    assert (s.first_period, s.next_period) == (0, 0)
    assert available(server, acct) == 0
    server.advance(utc(2030, 1, 15) - server.clock.now())  # the anchor: period 0
    got = server.stub.GetAccount(pb.GetAccountRequest(account_id=acct)).account
    assert [(b.asset, b.available) for b in got.balances] == [(ASSET, 100)]


def test_a_period_issued_to_a_pair_in_debt_repays_it_first_as_of_its_start(
    server: ServerThread,
) -> None:
    """Issue 18: a grant to an account below zero repays the debt first, as
    entries of their own movement; a schedule's period is such a grant."""
    acct = account(server)
    server.stub.SetSpendingLimits(
        pb.SetSpendingLimitsRequest(account_id=acct, asset=ASSET, floor=-100, idempotency_key=key())
    )
    monthly(server, acct, 100)  # January's 100 at once
    spent = server.stub.Charge(
        pb.ChargeRequest(
            account_id=acct,
            asset=ASSET,
            amount=150,
            idempotency_key=key(),
            overage=pb.OVERAGE_MODE_DEBT,
        )
    )
    assert (spent.balance.available, spent.balance.debt) == (0, 50)

    def bal(at: datetime | None = None) -> tuple[int, int, int]:
        req = pb.GetBalanceRequest(account_id=acct, asset=ASSET)
        if at is not None:
            req.as_of_time.CopyFrom(ts(at))
        b = server.stub.GetBalance(req).balance
        return (b.available, b.debt, b.granted)

    # February 2: February's 100 was issued at Feb 1 and paid the 50 owed first,
    # though nothing has been written since January (the read applies it).
    server.advance(utc(2030, 2, 2) - server.clock.now())
    assert bal() == (50, 0, 200)
    assert bal(utc(2030, 1, 31)) == (0, 0, 100)  # as of: debt is not history (0)
    assert bal(utc(2030, 2, 1, 12)) == (50, 0, 200)
    assert lots(server, acct) == [("allowance", 1, 100, 50)]
    charge(server, acct, 10)  # a write: the period and its repayment are written first
    assert bal() == (40, 0, 200)
    assert bal(utc(2030, 2, 1, 12)) == (50, 0, 200)  # the same answer after the write
    entries = server.stub.ListEntries(
        pb.ListEntriesRequest(account_id=acct, asset=ASSET, page_size=100)
    ).entries
    repaid = [e for e in entries if e.movement == pb.Entry.MOVEMENT_DEBT_REPAYMENT]
    assert [(e.amount, e.bucket) for e in repaid] == [(-50, pb.Entry.BUCKET_AVAILABLE)]
    # In the period's own transaction, out of its lot.
    february = [
        (e.amount, e.lot_id)
        for e in entries
        if e.movement == pb.Entry.MOVEMENT_GRANT and e.transaction_id == repaid[0].transaction_id
    ]
    assert february == [(100, repaid[0].lot_id)]
    st = server.stub.GetStatement(
        pb.GetStatementRequest(
            account_id=acct,
            asset=ASSET,
            from_time=ts(utc(2030, 1, 15)),
            to_time=ts(utc(2030, 2, 2)),
        )
    )
    lines = {m.movement: (m.amount, m.available_change) for m in st.movements}
    assert lines == {
        pb.Entry.MOVEMENT_GRANT: (100, 100),
        pb.Entry.MOVEMENT_DEBT_REPAYMENT: (50, -50),
        pb.Entry.MOVEMENT_SETTLE: (10, -10),
    }
    assert (st.opening.available, st.closing.available) == (0, 40)
    assert [e.movement for e in st.entries] == [
        pb.Entry.MOVEMENT_GRANT,
        pb.Entry.MOVEMENT_DEBT_REPAYMENT,
        pb.Entry.MOVEMENT_SETTLE,
    ]
    # Up to an instant inside the period, read after the write: the closing
    # balance counts the period's grant (as-of from its catch-up rows) and reconciles.
    mid = server.stub.GetStatement(
        pb.GetStatementRequest(
            account_id=acct,
            asset=ASSET,
            from_time=ts(utc(2030, 1, 15)),
            to_time=ts(utc(2030, 2, 1, 12)),
        )
    )
    assert (mid.closing.available, mid.closing.granted) == (50, 200)
    assert {m.movement for m in mid.movements} == {
        pb.Entry.MOVEMENT_GRANT,
        pb.Entry.MOVEMENT_DEBT_REPAYMENT,
    }
    # January's statement shows the loan, a positive amount lent into available.
    jan = server.stub.GetStatement(
        pb.GetStatementRequest(
            account_id=acct,
            asset=ASSET,
            from_time=ts(utc(2029, 12, 31)),
            to_time=ts(utc(2030, 1, 15)),
        )
    )
    assert {m.movement: (m.amount, m.available_change) for m in jan.movements} == {
        pb.Entry.MOVEMENT_GRANT: (100, 100),
        pb.Entry.MOVEMENT_DEBT: (50, 50),
        pb.Entry.MOVEMENT_SETTLE: (150, -150),
    }
    # A schedule created on a pair in debt: its first period repays at once.
    server.stub.Charge(
        pb.ChargeRequest(
            account_id=acct,
            asset=ASSET,
            amount=100,
            idempotency_key=key(),
            overage=pb.OVERAGE_MODE_DEBT,
        )
    )
    assert bal() == (0, 60, 200)
    monthly(server, acct, 25)
    assert bal() == (0, 35, 225)
    report = server.run(verify(server.database_url))
    assert report.ok, report.violations
    assert "never_below_floor" in report.checked
