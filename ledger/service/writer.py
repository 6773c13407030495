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
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from ledger.domain import commands as c
from ledger.domain import errors, rules
from ledger.domain.model import Result
from ledger.domain.rules import PairKey
from ledger.observability import metrics
from ledger.service import outcomes
from ledger.service.clock import Clock
from ledger.service.outcomes import Outcome
from ledger.service.ports import (
    IdempotencyRecord,
    SerializationConflict,
    StorageUnavailable,
    Store,
    WriterFenced,
)

log = logging.getLogger("ledger.writer")


@dataclass(frozen=True)
class WriterSettings:
    batch_max: int = 256
    retry_attempts_max: int = 8
    retry_backoff_base_s: float = 0.005
    retry_backoff_max_s: float = 0.2
    unavailable_retries_max: int = 2
    # A batch normally takes milliseconds; one that takes this long is talking to
    # a database that stopped answering: give up (UNAVAILABLE) within callers' deadlines.
    attempt_timeout_s: float = 2.0
    refund_grace: timedelta = timedelta(days=7)
    # Commands waiting for the writer, at most: past it a call is refused at once
    # (RESOURCE_EXHAUSTED with a retry delay) instead of queueing without bound.
    queue_max: int = 10_000


@dataclass
class _Pending:
    cmd: c.MutatingCommand
    future: asyncio.Future[tuple[Outcome, bool]]


def _key(cmd: c.MutatingCommand) -> tuple[str, str] | None:
    if isinstance(cmd, c.ExpireDue):
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
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _resolve(self._queue.get_nowait(), (self._gone("the writer stopped"), False))

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
        Errors: RateLimited when queue_max commands are waiting already."""
        if self._queue.qsize() >= self._settings.queue_max:
            raise errors.RateLimited(
                f"the writer has {self._settings.queue_max} commands waiting (writer queue_max);"
                " retry shortly with the same idempotency key",
                retry_after_s=0.05,
            )
        future: asyncio.Future[tuple[Outcome, bool]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(cmd, future))
        return future

    async def submit(self, cmd: c.MutatingCommand) -> tuple[Result, bool]:
        """Run a validated command. Returns (result, replayed); raises its LedgerError."""
        outcome, replayed = await self.enqueue(cmd)
        if isinstance(outcome, errors.LedgerError):
            outcome.replayed = replayed
            raise outcome
        return outcome, replayed

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._settings.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
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
        metrics.BATCH_SIZE.observe(len(batch))
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
        whole: set[PairKey] = set()
        attempt = 0
        while attempt < s.retry_attempts_max:
            started = time.perf_counter()
            attempt += 1
            try:
                try:
                    results, moved = await asyncio.wait_for(
                        self._attempt(batch, whole), s.attempt_timeout_s
                    )
                except TimeoutError as exc:
                    raise StorageUnavailable(f"batch took over {s.attempt_timeout_s} s") from exc
            except WriterFenced as exc:
                if self._on_fenced is not None:
                    self._on_fenced()
                raise _writer_gone("this process is no longer the elected writer") from exc
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
                quick = time.perf_counter() - first_started < s.attempt_timeout_s / 2
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

    async def _attempt(
        self, batch: list[_Pending], whole: set[PairKey]
    ) -> tuple[list[tuple[Outcome, bool]], list[tuple[str, str, int]]]:
        ws = rules.WorkingSet(now=self._clock.now(), refund_grace=self._settings.refund_grace)
        results: list[tuple[Outcome, bool] | None] = [None] * len(batch)
        async with self._store.batch(self._more_waiting) as unit:
            keys = sorted({k for p in batch if (k := _key(p.cmd)) is not None})
            # Everything in one read: commands that turn out to be replays load rows
            # they do not need, which costs less than a second round trip.
            reservation_ids, pairs, accounts, grant_pairs = _footprint([p.cmd for p in batch])
            stored = await unit.load(
                ws, keys, reservation_ids, pairs, accounts, whole | grant_pairs
            )
            to_run, same_key_as = self._dedupe(stored, batch, results)
            records: list[IdempotencyRecord] = []
            for i in to_run:
                cmd = batch[i].cmd
                outcome: Outcome
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
                if not isinstance(cmd, c.ExpireDue):
                    records.append(
                        IdempotencyRecord(
                            cmd.caller,
                            cmd.idempotency_key,
                            cmd.method,
                            cmd.fingerprint(),
                            outcomes.encode(outcome),
                        )
                    )
            for i, j in same_key_as.items():
                first, this = batch[j].cmd, batch[i].cmd
                first_outcome = results[j]
                if first_outcome is None or isinstance(first, c.ExpireDue):
                    raise errors.InvariantViolation("duplicate key's first command has no outcome")
                if isinstance(this, c.ExpireDue):
                    raise errors.InvariantViolation("an unkeyed command has no duplicate")
                results[i] = _replay(first.method, first.fingerprint(), first_outcome[0], this)
            await unit.save(ws, records)
        done = [r for r in results if r is not None]
        if len(done) != len(batch):
            raise errors.InvariantViolation("batch finished with commands lacking an outcome")
        return done, ws.moved

    def _more_waiting(self) -> bool:
        return not self._queue.empty()

    def _dedupe(
        self,
        records: dict[tuple[str, str], IdempotencyRecord],
        batch: list[_Pending],
        results: list[tuple[Outcome, bool] | None],
    ) -> tuple[list[int], dict[int, int]]:
        """Replays from stored records; duplicates within the batch follow their first."""
        to_run: list[int] = []
        first_in_batch: dict[tuple[str, str], int] = {}
        same_key_as: dict[int, int] = {}
        for i, p in enumerate(batch):
            if isinstance(p.cmd, c.ExpireDue):
                to_run.append(i)
                continue
            key = (p.cmd.caller, p.cmd.idempotency_key)
            record = records.get(key)
            if record is not None:
                results[i] = _replay(
                    record.method, record.request_hash, outcomes.decode(record.outcome), p.cmd
                )
            elif key in first_in_batch:
                same_key_as[i] = first_in_batch[key]
            else:
                first_in_batch[key] = i
                to_run.append(i)
        return to_run, same_key_as


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
        if isinstance(cmd, (c.Grant, c.Reserve, c.Charge)):
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


def _resolve(p: _Pending, outcome: tuple[Outcome, bool]) -> None:
    if not p.future.done():
        p.future.set_result(outcome)
