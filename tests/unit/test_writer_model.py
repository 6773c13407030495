"""The writer, the rules and the stored outcomes, proven in memory in seconds.

A Hypothesis state machine submits random commands concurrently to a real
Writer over the in-memory FakeStore (tests/unit/fake_store.py), so they are
batched together, with duplicate keys inside a batch, replays of earlier keys,
sweeps and clock jumps. After every step the tables must pass what
`ledger verify` checks, and every replay must answer its key's first outcome.
The end-to-end tests prove the same SQL against PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.model import GroupResult, ReservationResult
from ledger.service.ports import Store
from ledger.service.writer import Writer, WriterSettings
from tests.unit.fake_store import FakeStore

ACCOUNTS = ("acct-a", "acct-b")
ASSET = "crm"

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t


command = st.tuples(
    st.sampled_from(["grant", "reserve", "charge", "group", "settle", "release", "refund"]),
    st.integers(0, 1),  # account
    st.integers(1, 40),  # amount
    st.integers(0, 120),  # ttl / expiry seconds (0: none)
    st.integers(0, 50),  # which reservation
    st.booleans(),  # final / priority
    st.integers(0, 4),  # reuse the key of an earlier command of this step
)


def _summary(outcome: Any) -> Any:
    """What a replay must answer again: the result, or the error's reason and message."""
    if isinstance(outcome, errors.LedgerError):
        return (outcome.reason, outcome.message)
    if isinstance(outcome, ReservationResult):
        return outcome.reservation
    if isinstance(outcome, GroupResult):
        return outcome
    return outcome


class WriterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.store = FakeStore()
        for a in ACCOUNTS:
            self.store.create_account(a)
        self.writer = Writer(cast(Store, self.store), self.clock, WriterSettings(batch_max=5))
        self.loop.run_until_complete(self._start())
        self.reservations: list[str] = []
        self.first: dict[str, tuple[c.KeyedCommand, Any]] = {}
        self.n = 0

    async def _start(self) -> None:
        self.writer.start()

    def _build(self, spec: tuple[Any, ...]) -> c.KeyedCommand | None:
        kind, who, amount, seconds, which, flag, _ = spec
        self.n += 1
        k, acct = f"k{self.n}", ACCOUNTS[who]
        res = self.reservations[which % len(self.reservations)] if self.reservations else None
        if kind == "grant":
            expires = self.clock.t + timedelta(seconds=seconds) if seconds else None
            return c.Grant("caller", k, acct, ASSET, amount, expires_at=expires, priority=int(flag))
        if kind == "reserve":
            return c.Reserve("caller", k, acct, ASSET, amount, ttl_s=seconds or None)
        if kind == "charge":
            return c.Charge("caller", k, acct, ASSET, amount)
        if kind == "group":
            legs = (c.Leg(ACCOUNTS[0], ASSET, amount, "x"), c.Leg(ACCOUNTS[1], ASSET, 1, "y"))
            return c.ReserveGroup("caller", k, legs, ttl_s=seconds or None)
        if res is None:
            return None
        if kind == "settle":
            return c.Settle("caller", k, res, amount, final=flag)
        if kind == "release":
            return c.Release("caller", k, res, amount if flag else 0)
        return c.Refund("caller", k, res, amount)

    async def _run(self, cmds: list[c.KeyedCommand]) -> list[Any]:
        async def one(cmd: c.KeyedCommand) -> Any:
            try:
                return await self.writer.submit(cmd)
            except errors.LedgerError as exc:
                return exc

        return list(await asyncio.gather(*(one(x) for x in cmds)))

    def _record(self, cmd: c.KeyedCommand, got: Any) -> None:
        outcome = got if isinstance(got, errors.LedgerError) else got[0]
        assert not (isinstance(outcome, errors.LedgerError) and outcome.reason == "INTERNAL"), (
            f"{cmd}: INTERNAL (a broken invariant; see the log)"
        )
        if isinstance(outcome, ReservationResult):
            self.reservations.append(outcome.reservation.reservation_id)
        if isinstance(outcome, GroupResult):
            self.reservations += [r.reservation_id for r in outcome.reservations]
        first = self.first.get(cmd.idempotency_key)
        if first is None:
            self.first[cmd.idempotency_key] = (cmd, outcome)
            return
        assert got is outcome or got[1], f"{cmd.method} {cmd.idempotency_key}: a replay not marked"
        if isinstance(outcome, errors.LedgerError) and outcome.reason == "IDEMPOTENCY_KEY_REUSED":
            assert first[0].fingerprint() != cmd.fingerprint() or first[0].method != cmd.method
            return
        assert _summary(outcome) == _summary(first[1]), f"replay of {cmd.idempotency_key} differs"

    @rule(specs=st.lists(command, min_size=1, max_size=8))
    def submit_together(self, specs: list[tuple[Any, ...]]) -> None:
        cmds: list[c.KeyedCommand] = []
        for spec in specs:
            cmd = self._build(spec)
            if cmd is None:
                continue
            reuse = spec[-1]
            if reuse and cmds and reuse <= len(cmds):
                cmd = cmds[-reuse]  # the same command again, same key, in the same batch
            cmds.append(cmd)
        for cmd, got in zip(cmds, self.loop.run_until_complete(self._run(cmds)), strict=True):
            self._record(cmd, got)

    @rule(which=st.integers(0, 1000))
    def replay(self, which: int) -> None:
        if not self.first:
            return
        cmd, _ = list(self.first.values())[which % len(self.first)]
        (got,) = self.loop.run_until_complete(self._run([cmd]))
        self._record(cmd, got)

    @rule(seconds=st.sampled_from([1, 5, 30, 61, 125]))
    def jump(self, seconds: int) -> None:
        self.clock.t += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        sweep = c.ExpireDue(tuple(self.reservations), tuple((a, ASSET) for a in ACCOUNTS))
        self.loop.run_until_complete(self.writer.submit(sweep))

    @invariant()
    def verify_holds(self) -> None:
        assert self.store.violations(self.clock.t) == []

    def teardown(self) -> None:
        self.loop.run_until_complete(self.writer.stop())
        self.loop.close()


def test_writer_rules_and_outcomes_keep_every_invariant() -> None:
    run_state_machine_as_test(
        WriterMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
