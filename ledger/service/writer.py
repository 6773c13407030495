"""The single writer: coalesces concurrent commands into one SERIALIZABLE
transaction per batch (group commit).

Why: under SERIALIZABLE, concurrent transactions on one hot balance row abort
each other, and retrying is slow. One writer per process applies a batch of
commands in order, in memory, on the rows the batch loaded, then writes the
result with one statement. Each command keeps its own outcome and its own
idempotency record; a business failure of one command does not affect the
others. Replicas still conflict with each other on shared rows: those
conflicts are retried (bounded, jittered) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import orjson

from ledger.domain import commands as c
from ledger.domain import errors, limits, rules
from ledger.domain.model import BatchResult, GrantResult, ReservationResult, Result
from ledger.domain.rules import PairKey
from ledger.domain.workingset import ScheduleBehind
from ledger.observability import metrics
from ledger.service import batching, outcomes
from ledger.service.clock import Clock
from ledger.service.outcomes import Outcome
from ledger.service.ports import (
    BatchUnit,
    IdempotencyRecord,
    SerializationConflict,
    StorageUnavailable,
    Store,
    WriterFenced,
)
from ledger.service.retention import IdempotencyRetention
from ledger.service.tasks import stop_task

log = logging.getLogger("ledger.writer")

# How long an abandoned transaction waits for its statement in flight before
# dropping the connection instead.
_AHEAD_DRAIN_S = 1.0


@dataclass(frozen=True)
class WriterSettings:
    # Commands per transaction. Large enough that a full SubmitBatch request
    # (BATCH_COMMANDS_MAX) and the single calls waiting beside it share one
    # transaction: one BEGIN/load/save/COMMIT for all of them.
    batch_max: int = 1024
    retry_attempts_max: int = 8
    retry_backoff_base_s: float = 0.005
    retry_backoff_max_s: float = 0.2
    unavailable_retries_max: int = 2
    # A batch normally takes milliseconds; one that takes this long is talking to
    # a database that stopped answering: give up (UNAVAILABLE) within callers' deadlines.
    attempt_timeout_s: float = 2.0
    # ... plus this much per command: a transaction of 1,000 commands (a full
    # SubmitBatch) does a thousand commands' work, in Python and in PostgreSQL,
    # and on a loaded machine that alone took over 2 s (bench, batch-charge at
    # 64 in flight, load average 15-22 on 2 cores).
    attempt_timeout_per_command_s: float = 0.002
    refund_grace: timedelta = timedelta(days=7)
    retention: IdempotencyRetention = field(default_factory=IdempotencyRetention)
    # Commands waiting for the writer, at most: past it a call is refused at once
    # (RESOURCE_EXHAUSTED with a retry delay) instead of queueing without bound.
    # A SubmitBatch counts its commands.
    queue_max: int = 10_000
    # Commands per statement when a transaction writes in parts (_apply_and_save):
    # large enough that a statement's fixed cost (a round trip, the plan) stays
    # small beside its rows, small enough that Python has the next part ready
    # while PostgreSQL writes this one. 0 writes every transaction in one statement.
    save_part_commands: int = 128


@dataclass
class _Pending:
    cmd: c.MutatingCommand
    future: asyncio.Future[tuple[Outcome, bool]]


# The record each idempotency key was recorded with, by this batch's attempts.
Mine = dict[tuple[str, str], IdempotencyRecord]


def _same(ours: IdempotencyRecord, stored: IdempotencyRecord) -> bool:
    """Whether a stored record is one this batch's attempts wrote. The outcome alone
    cannot tell: a refusal carries no id, and another writer (after a writer change)
    may have recorded the same refusal for a duplicate of the key. Its expiry can:
    it is made from the recording transaction's instant, to the microsecond. The
    outcome is compared as stored (the save writes the document with orjson:
    datetimes become ISO 8601 text)."""
    return ours.expires_at == stored.expires_at and bool(
        orjson.loads(orjson.dumps(ours.outcome)) == stored.outcome
    )


def _key(cmd: c.MutatingCommand) -> tuple[str, str] | None:
    if isinstance(cmd, (c.ExpireDue, c.Batch)):
        return None
    return (cmd.caller, cmd.idempotency_key)


def _replay(
    first_method: str, first_hash: bytes, first: Outcome, cmd: c.KeyedCommand
) -> tuple[Outcome, bool]:
    if first_method != cmd.method or not cmd.matches(first_hash):
        return errors.IdempotencyKeyReused(
            f"idempotency key {cmd.idempotency_key!r} was first used for a different request"
            f" ({first_method}); use a new key for a new request",
            {"first_method": first_method},
        ), False
    if isinstance(first, errors.InvalidArgument):
        return errors.InvalidArgument(first.violations), False  # never recorded: not a replay
    if isinstance(first, errors.LedgerError):
        # A fresh error object per reply: the first caller may still hold the original.
        return type(first)(first.message, dict(first.metadata)), True
    return first, True


def _writer_gone(detail: str) -> errors.WriterUnavailable:
    return errors.WriterUnavailable(
        f"{detail}; retry with the same idempotency key (a retry replays the first"
        " outcome if it was recorded)",
        {"cause": detail},
    )


class Writer:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: WriterSettings = WriterSettings(),
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # An item taken from the queue that did not fit the transaction being
        # collected (an atomic batch, which runs alone, or a batch that would
        # pass batch_max): it starts the next one.
        self._held: _Pending | None = None
        self._waiting = 0  # commands queued (a batch counts its commands), for queue_max
        # Called when a batch found that this process is no longer the elected writer.
        self._on_fenced = on_fenced
        self._database_lost = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def stop(self, database_lost: bool = False) -> None:
        """Stop batching; commands not answered yet answer WRITER_UNAVAILABLE, or
        DATABASE_UNAVAILABLE when the writer stops because the database is unreachable."""
        self._database_lost = database_lost
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        if self._held is not None:
            _resolve(self._held, (self._gone("the writer stopped"), False))
            self._held = None
        while not self._queue.empty():
            _resolve(self._queue.get_nowait(), (self._gone("the writer stopped"), False))
        self._waiting = 0

    def _gone(self, detail: str) -> errors.LedgerError:
        if self._database_lost:
            return errors.DatabaseUnavailable(
                "the database is unavailable; retry with the same idempotency key"
                " (a retry replays the first outcome if it was recorded)",
                {"cause": detail},
            )
        return _writer_gone(detail)

    def enqueue(self, cmd: c.MutatingCommand) -> asyncio.Future[tuple[Outcome, bool]]:
        """Queue a validated command; the future gets (outcome, replayed), never an exception.
        For callers that wait for many commands at once (no task per command).
        Errors: RateLimited when queue_max commands are waiting already (a batch
        counts its commands)."""
        pending = _Pending(cmd, asyncio.get_running_loop().create_future())
        if self._waiting + _size(pending) > self._settings.queue_max:
            raise errors.RateLimited(
                f"the writer has {self._waiting} commands waiting (writer queue_max"
                f" {self._settings.queue_max}); retry shortly with the same idempotency keys",
                retry_after_s=0.05,
            )
        self._waiting += _size(pending)
        self._queue.put_nowait(pending)
        return pending.future

    async def submit(self, cmd: c.MutatingCommand) -> tuple[Result, bool]:
        """Run a validated command. Returns (result, replayed); raises its LedgerError.

        A Batch returns (BatchResult, False): each command's own outcome. It is
        one item of the queue, never split: its commands share a transaction
        with each other and with the commands waiting beside it (up to
        `batch_max` commands). An atomic batch runs as one transaction of its
        own and raises the failing command's error (batching.atomic_failure)
        when one fails.
        """
        outcome, replayed = await self.enqueue(cmd)
        if isinstance(outcome, errors.LedgerError):
            outcome.replayed = replayed
            raise outcome
        return outcome, replayed

    async def _run(self) -> None:
        while True:
            first, self._held = self._held or await self._queue.get(), None
            batch, size = [first], _size(first)
            self._waiting -= size
            while (
                not _atomic(first) and size < self._settings.batch_max and not self._queue.empty()
            ):
                p = self._queue.get_nowait()
                if _atomic(p) or size + _size(p) > self._settings.batch_max:
                    self._held = p  # the next transaction's first
                    break
                batch.append(p)
                size += _size(p)
                self._waiting -= _size(p)
            batch = [p for p in batch if not p.future.done()]  # callers that gave up
            if batch:
                try:
                    await self._execute(batch)
                except asyncio.CancelledError:
                    # Stopped mid-batch: its outcome is unknown, a retry finds out.
                    for p in batch:
                        _resolve(p, (self._gone("the writer stopped during the batch"), False))
                    raise

    async def _execute(self, batch: list[_Pending]) -> None:
        metrics.BATCH_SIZE.observe(sum(_size(p) for p in batch))
        try:
            results = await self._with_retries(batch)
        except errors.LedgerError as exc:
            for p in batch:
                _resolve(p, (exc, False))
            return
        except Exception:
            if len(batch) > 1:
                # A bug in one command must not fail its neighbours: run each alone.
                for p in batch:
                    await self._execute([p])
                return
            log.exception("command %s failed", batch[0].cmd.method)
            _resolve(batch[0], (errors.LedgerError("internal error"), False))
            return
        for p, outcome in zip(batch, results, strict=True):
            _resolve(p, outcome)

    async def _with_retries(self, batch: list[_Pending]) -> list[tuple[Outcome, bool]]:
        s = self._settings
        unavailable = 0
        first_started = time.perf_counter()
        timeout_s = s.attempt_timeout_s + s.attempt_timeout_per_command_s * sum(
            _size(p) for p in batch
        )
        whole: set[PairKey] = set()
        # The outcomes this batch's attempts recorded, by key: a retry after a
        # connection lost at COMMIT finds its own records when that COMMIT had
        # in fact committed, and must answer them as first answers, not replays.
        mine: Mine = {}
        attempt = 0
        while attempt < s.retry_attempts_max:
            started = time.perf_counter()
            attempt += 1
            try:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for drops a stop
                    # that arrives as the attempt ends (ledger.service.tasks).
                    async with asyncio.timeout(timeout_s):
                        results, moved = await self._attempt(batch, whole, mine)
                except TimeoutError as exc:
                    raise StorageUnavailable(f"batch took over {timeout_s:.1f} s") from exc
            except WriterFenced as exc:
                if self._on_fenced is not None:
                    self._on_fenced()
                raise _writer_gone("this process is no longer the elected writer") from exc
            except ScheduleBehind as behind:
                # More periods are due than one batch issues (a long downtime):
                # issue them in batches of their own first, then run this one.
                await self._drain_schedules(behind.pairs)
                attempt -= 1
                continue
            except rules.LotsNotLoaded as more:
                # A command needs lots past the first few the batch read: read those
                # pairs whole and run again (bounded: each pair is added once).
                if more.pairs <= whole:
                    raise errors.InvariantViolation(f"lots still missing: {more}") from more
                whole |= more.pairs
                attempt -= 1
                continue
            except SerializationConflict:
                metrics.SERIALIZATION_RETRIES.inc()
                backoff = min(s.retry_backoff_max_s, s.retry_backoff_base_s * 2**attempt)
                await asyncio.sleep(backoff * random.random())
                continue
            except StorageUnavailable as exc:
                # Running the batch again is safe even if the broken connection had
                # committed it: the retry then finds its idempotency records and replays.
                unavailable += 1
                quick = time.perf_counter() - first_started < timeout_s / 2
                if unavailable <= s.unavailable_retries_max and self._store.reachable and quick:
                    await asyncio.sleep(0.05 + 0.1 * random.random())
                    continue
                raise errors.DatabaseUnavailable(
                    "the database is unavailable; retry with the same idempotency key"
                    " (a retry replays the first outcome if it was recorded)",
                    {"cause": str(exc)},
                ) from exc
            finally:
                metrics.TRANSACTION_SECONDS.labels("batch").observe(time.perf_counter() - started)
            metrics.record_moved(moved)
            return results
        metrics.RETRIES_EXHAUSTED.inc()
        raise errors.Contention(
            f"serialization conflicts persisted over {s.retry_attempts_max} attempts; nothing was recorded,"
            " retry with the same idempotency key",
            {"attempts": str(s.retry_attempts_max)},
        )

    def _working_set(self, partial: bool = False) -> rules.WorkingSet:
        return rules.WorkingSet(
            now=self._clock.now(),
            refund_grace=self._settings.refund_grace,
            periods_max=limits.SCHEDULE_PERIODS_PER_BATCH_MAX,
            periods_partial=partial,
        )

    async def _drain_schedules(self, pairs: set[PairKey]) -> None:
        """Issue the due periods of these pairs' schedules, SCHEDULE_PERIODS_PER_BATCH_MAX
        per schedule per transaction, until none is due (bounded by
        SCHEDULE_DRAIN_BATCHES_MAX). Each transaction is a catch_up of the pairs,
        as the sweeper's ExpireDue is: it changes no answer, only makes it durable."""
        for _ in range(limits.SCHEDULE_DRAIN_BATCHES_MAX):
            ws = self._working_set(partial=True)
            try:
                async with self._store.batch(self._more_waiting) as unit:
                    await unit.load(ws, [], set(), set(pairs), set(), set())
                    for pair in sorted(pairs):
                        rules.catch_up(ws, *pair)
                    await unit.save(ws, [])
            except SerializationConflict:
                metrics.SERIALIZATION_RETRIES.inc()
                continue
            metrics.record_moved(ws.moved)
            if not ws.behind:
                return
        raise errors.InvariantViolation(f"schedules of {sorted(pairs)} still behind")

    async def _attempt(
        self, batch: list[_Pending], whole: set[PairKey], mine: Mine
    ) -> tuple[list[tuple[Outcome, bool]], list[tuple[str, str, int]]]:
        if len(batch) == 1 and _atomic(batch[0]) and isinstance(atomic := batch[0].cmd, c.Batch):
            return await self._attempt_atomic(atomic, whole, mine)
        cmds = _flat(batch)
        ws = self._working_set()
        async with self._store.batch(self._more_waiting) as unit:
            keys = sorted({k for cmd in cmds if (k := _key(cmd)) is not None})
            # Everything in one read: commands that turn out to be replays load rows
            # they do not need, which costs less than a second round trip.
            stored = await self._load(unit, ws, keys, cmds, whole)
            done = await self._apply_and_save(unit, ws, stored, cmds, mine)
        return _regroup(batch, done), ws.moved

    async def _attempt_atomic(
        self, batch: c.Batch, whole: set[PairKey], mine: Mine
    ) -> tuple[list[tuple[Outcome, bool]], list[tuple[str, str, int]]]:
        """All of the batch or none of it: on the first command that fails,
        nothing is saved (the transaction commits its reads only), so the
        failure is recorded nowhere and a corrected retry with the same keys runs."""
        cmds: list[c.MutatingCommand] = list(batch.commands)
        ws = self._working_set()
        failure: errors.LedgerError | None = None
        async with self._store.batch(self._more_waiting) as unit:
            keys = sorted({k for cmd in cmds if (k := _key(cmd)) is not None})
            stored = await self._load(unit, ws, keys, cmds, whole)
            done, records = self._apply_all(ws, stored, cmds, mine)
            for i, (outcome, _) in enumerate(done):
                if isinstance(outcome, errors.LedgerError):
                    failure = batching.atomic_failure(i, batch.commands[i], outcome)
                    break
            else:
                await unit.save(ws, records)
        if failure is not None:
            return [(failure, False)], []
        return [(_batch_result(done), False)], ws.moved

    @staticmethod
    async def _load(
        unit: BatchUnit,
        ws: rules.WorkingSet,
        keys: list[tuple[str, str]],
        cmds: list[c.MutatingCommand],
        whole: set[PairKey],
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        reservation_ids, pairs, accounts, grant_pairs = _footprint(cmds)
        lot_ids = frozenset(cmd.lot_id for cmd in cmds if isinstance(cmd, c.VoidGrant))
        schedule_ids = frozenset(
            cmd.schedule_id
            for cmd in cmds
            if isinstance(cmd, c.CancelGrantSchedule | c.UpdateGrantSchedule)
        )
        if lot_ids or schedule_ids:  # VoidGrant's lots; CancelGrantSchedule's schedules
            return await unit.load(
                ws,
                keys,
                reservation_ids,
                pairs,
                accounts,
                whole | grant_pairs,
                lot_ids=lot_ids,
                schedule_ids=schedule_ids,
            )
        return await unit.load(ws, keys, reservation_ids, pairs, accounts, whole | grant_pairs)

    def _apply_all(
        self,
        ws: rules.WorkingSet,
        stored: dict[tuple[str, str], IdempotencyRecord],
        cmds: list[c.MutatingCommand],
        mine: Mine,
    ) -> tuple[list[tuple[Outcome, bool]], list[IdempotencyRecord]]:
        """Each command's outcome, in order, and the idempotency records to write."""
        results: list[tuple[Outcome, bool] | None] = [None] * len(cmds)
        to_run, same_key_as = self._dedupe(stored, cmds, results, mine)
        records = self._apply_some(ws, cmds, to_run, results, mine)
        return _finish(cmds, results, same_key_as), records

    async def _apply_and_save(
        self,
        unit: BatchUnit,
        ws: rules.WorkingSet,
        stored: dict[tuple[str, str], IdempotencyRecord],
        cmds: list[c.MutatingCommand],
        mine: Mine,
    ) -> list[tuple[Outcome, bool]]:
        """Apply the commands in order and write what they changed, in the
        transaction of `unit`; each command's outcome, in order.

        A transaction of more than `save_part_commands` commands is written in
        parts, in command order: while PostgreSQL runs the statement that writes
        part k (`save_ahead`), Python applies part k+1, so the two take turns
        less (a serial writer otherwise leaves one of them idle). The parts are
        statements of one transaction: it still commits all of them or none, and
        what each statement writes is exactly what one save would have written,
        split at command boundaries."""
        results: list[tuple[Outcome, bool] | None] = [None] * len(cmds)
        to_run, same_key_as = self._dedupe(stored, cmds, results, mine)
        step = self._settings.save_part_commands
        parts = (
            [to_run[i : i + step] for i in range(0, len(to_run), step)]
            if 0 < step < len(to_run)
            else [to_run]
        )
        ahead: asyncio.Future[None] | None = None
        try:
            for part in parts[:-1]:
                records = self._apply_some(ws, cmds, part, results, mine)
                if ahead is not None:
                    await ahead
                ahead = await unit.save_ahead(ws, records)
            records = self._apply_some(ws, cmds, parts[-1], results, mine)
            if ahead is not None:
                await ahead
            ahead = None
            await unit.save(ws, records)
        except BaseException as exc:
            if ahead is not None and not ahead.done():
                # The transaction is abandoned (rolled back); its connection must
                # first finish the statement in flight, or be dropped if we were
                # cancelled (asyncio.wait does not raise the statement's error).
                if not isinstance(exc, asyncio.CancelledError):
                    await asyncio.wait([ahead], timeout=_AHEAD_DRAIN_S)
                if not ahead.done():
                    ahead.cancel()
            raise
        finally:
            if ahead is not None:
                ahead.add_done_callback(_consume)
        return _finish(cmds, results, same_key_as)

    def _apply_some(
        self,
        ws: rules.WorkingSet,
        cmds: list[c.MutatingCommand],
        to_run: list[int],
        results: list[tuple[Outcome, bool] | None],
        mine: Mine,
    ) -> list[IdempotencyRecord]:
        """Apply the commands `to_run` (indexes into `cmds`, in order), setting
        their `results`; the idempotency records to write for them (also kept
        in `mine`, for a retry of this batch to know them)."""
        records: list[IdempotencyRecord] = []
        for i in to_run:
            cmd = cmds[i]
            outcome: Outcome
            # The journal rows this command writes name it (the change stream shows them).
            ws.origin = (
                ("", "")
                if isinstance(cmd, c.ExpireDue | c.Batch)
                else (
                    cmd.caller,
                    cmd.idempotency_key,
                )
            )
            try:
                outcome = rules.apply(ws, cmd)
            except errors.InvalidArgument as exc:
                # Bad input that only the rules can see (it depends on the
                # time): this command's answer, recorded nowhere, so a
                # corrected retry with the same key can still run.
                results[i] = (exc, False)
                continue
            except errors.LedgerError as exc:
                if exc.reason not in errors.RECORDABLE:
                    raise
                outcome = exc
            results[i] = (outcome, False)
            if isinstance(cmd, c.ExpireDue | c.Batch):
                continue
            refused = isinstance(outcome, errors.LedgerError)
            record = IdempotencyRecord(
                cmd.caller,
                cmd.idempotency_key,
                cmd.method,
                cmd.fingerprint(),
                outcomes.encode(outcome),
                self._settings.retention.expires_at(ws.now, refused),
            )
            records.append(record)
            mine[(cmd.caller, cmd.idempotency_key)] = record
        return records

    def _more_waiting(self) -> bool:
        return self._held is not None or not self._queue.empty()

    def _dedupe(
        self,
        records: dict[tuple[str, str], IdempotencyRecord],
        cmds: list[c.MutatingCommand],
        results: list[tuple[Outcome, bool] | None],
        mine: Mine,
    ) -> tuple[list[int], dict[int, int]]:
        """Replays from stored records; duplicates within the batch follow their first.

        A stored record this batch wrote itself (`mine`: an earlier attempt
        whose COMMIT went through although its connection broke before the
        answer) is the first answer of the first command with its key: that
        caller sent the key once, so it is not told "replayed"."""
        to_run: list[int] = []
        first_in_batch: dict[tuple[str, str], int] = {}
        same_key_as: dict[int, int] = {}
        for i, cmd in enumerate(cmds):
            if isinstance(cmd, c.ExpireDue | c.Batch):
                to_run.append(i)
                continue
            key = (cmd.caller, cmd.idempotency_key)
            record = records.get(key)
            if record is not None:
                outcome, replayed = _replay(
                    record.method, record.request_hash, outcomes.decode(record.outcome), cmd
                )
                ours = mine.get(key)
                if key not in first_in_batch and ours is not None and _same(ours, record):
                    replayed = False
                first_in_batch.setdefault(key, i)
                results[i] = (outcome, replayed)
            elif key in first_in_batch:
                same_key_as[i] = first_in_batch[key]
            else:
                first_in_batch[key] = i
                to_run.append(i)
        return to_run, same_key_as


def _finish(
    cmds: list[c.MutatingCommand],
    results: list[tuple[Outcome, bool] | None],
    same_key_as: dict[int, int],
) -> list[tuple[Outcome, bool]]:
    """Every command's outcome: duplicates within the batch answer as their first."""
    for i, j in same_key_as.items():
        first, this = cmds[j], cmds[i]
        first_outcome = results[j]
        if first_outcome is None or isinstance(first, c.ExpireDue | c.Batch):
            raise errors.InvariantViolation("duplicate key's first command has no outcome")
        if isinstance(this, c.ExpireDue | c.Batch):
            raise errors.InvariantViolation("an unkeyed command has no duplicate")
        results[i] = _replay(first.method, first.fingerprint(), first_outcome[0], this)
    done = [r for r in results if r is not None]
    if len(done) != len(cmds):
        raise errors.InvariantViolation("batch finished with commands lacking an outcome")
    return done


def _consume(f: asyncio.Future[None]) -> None:
    """Retrieve an abandoned statement's error (it was the transaction's end)."""
    if not f.cancelled():
        f.exception()


def _footprint(
    cmds: list[c.MutatingCommand],
) -> tuple[set[str], set[PairKey], set[str], set[PairKey]]:
    """The reservations, (account, asset) pairs and accounts a set of commands
    reads, and the pairs whose live lots it reads whole (a Grant counts them)."""
    reservation_ids: set[str] = set()
    pairs: set[PairKey] = set()
    accounts: set[str] = set()
    grant_pairs: set[PairKey] = set()
    for cmd in cmds:
        if isinstance(cmd, c.Grant):
            grant_pairs.add((cmd.account_id, cmd.asset))
        if isinstance(
            cmd,
            (
                c.Grant,
                c.Reserve,
                c.Charge,
                c.SetSpendingLimits,
                c.SetMemberCap,
                c.CreateGrantSchedule,
            ),
        ):
            pairs.add((cmd.account_id, cmd.asset))
            accounts.add(cmd.account_id)
        elif isinstance(cmd, c.ReserveGroup):
            for leg in cmd.legs:
                pairs.add((leg.account_id, leg.asset))
                accounts.add(leg.account_id)
        elif isinstance(cmd, (c.Settle, c.Release, c.Refund)):
            reservation_ids.add(cmd.reservation_id)
        elif isinstance(cmd, c.ExpireDue):
            reservation_ids.update(cmd.reservation_ids)
            pairs.update(cmd.lot_pairs)
    return reservation_ids, pairs | grant_pairs, accounts, grant_pairs


def _atomic(p: _Pending) -> bool:
    return isinstance(p.cmd, c.Batch) and p.cmd.atomic


def _size(p: _Pending) -> int:
    """Commands an item of the queue brings to a transaction."""
    return len(p.cmd.commands) if isinstance(p.cmd, c.Batch) else 1


def _flat(batch: list[_Pending]) -> list[c.MutatingCommand]:
    """The commands of a transaction, in order, batches unpacked."""
    cmds: list[c.MutatingCommand] = []
    for p in batch:
        if isinstance(p.cmd, c.Batch):
            cmds.extend(p.cmd.commands)
        else:
            cmds.append(p.cmd)
    return cmds


def _regroup(batch: list[_Pending], done: list[tuple[Outcome, bool]]) -> list[tuple[Outcome, bool]]:
    """One outcome per queue item from one per command: a batch's as a BatchResult."""
    out: list[tuple[Outcome, bool]] = []
    i = 0
    for p in batch:
        n = _size(p)
        out.append(
            (_batch_result(done[i : i + n]), False) if isinstance(p.cmd, c.Batch) else done[i]
        )
        i += n
    if i != len(done):
        raise errors.InvariantViolation("a transaction answered another number of commands")
    return out


def _batch_result(done: list[tuple[Outcome, bool]]) -> BatchResult:
    answers: list[tuple[GrantResult | ReservationResult | errors.LedgerError, bool]] = []
    for outcome, replayed in done:
        if isinstance(outcome, errors.LedgerError):
            outcome.replayed = replayed
        elif not isinstance(outcome, (GrantResult, ReservationResult)):
            raise errors.InvariantViolation(f"a batch command returned {outcome!r}")
        answers.append((outcome, replayed))
    return BatchResult(tuple(answers))


def _resolve(p: _Pending, outcome: tuple[Outcome, bool]) -> None:
    if not p.future.done():
        p.future.set_result(outcome)
