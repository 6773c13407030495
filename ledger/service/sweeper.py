"""Background work: expire overdue reservations and lots, keep gauges fresh,
prune old idempotency records.

It runs only in the process that holds the writer lease
(ledger.service.election) and submits ExpireDue commands to that writer,
which re-reads the rows inside a SERIALIZABLE transaction: a sweep that
races with a command on the same reservation finds it already done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.observability import metrics
from ledger.service.clock import Clock
from ledger.service.ports import CommandSink, SerializationConflict, StorageUnavailable, Store

log = logging.getLogger("ledger.sweeper")


@dataclass(frozen=True)
class SweeperSettings:
    interval_s: float = 1.0
    batch_max: int = 500
    idempotency_retention: timedelta = timedelta(days=7)
    prune_every_s: float = 60.0
    prune_batch_max: int = 5000
    # Sweeps of batch_max in a row before sleeping, at most (a backlog is worked
    # off over several ticks, never in one unbounded loop).
    catch_up_rounds_max: int = 20


class Sweeper:
    def __init__(
        self,
        store: Store,
        writer: CommandSink,
        clock: Clock,
        settings: SweeperSettings = SweeperSettings(),
    ) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            return  # already running
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep_once(self) -> int:
        """Expire what is due now. Returns how many reservations and pairs it submitted."""
        with metrics.TRANSACTION_SECONDS.labels("sweep").time():
            reservation_ids, lot_pairs = await self._store.due(
                self._clock.now(), self._settings.batch_max
            )
            if reservation_ids or lot_pairs:
                await self._writer.submit(c.ExpireDue(tuple(reservation_ids), tuple(lot_pairs)))
        return len(reservation_ids) + len(lot_pairs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_prune = loop.time()
        while True:
            try:
                for _ in range(self._settings.catch_up_rounds_max):
                    if await self.sweep_once() < self._settings.batch_max:
                        break  # nothing more is due: sleep
                open_count, overdue_s = await self._store.reservation_stats(self._clock.now())
                metrics.OPEN_RESERVATIONS.set(open_count)
                metrics.OLDEST_OVERDUE_S.set(overdue_s)
                if loop.time() - last_prune >= self._settings.prune_every_s:
                    last_prune = loop.time()
                    before = self._clock.now() - self._settings.idempotency_retention
                    pruned = await self._store.prune_idempotency(
                        before, self._settings.prune_batch_max
                    )
                    if pruned:
                        log.info(
                            "pruned %d idempotency records older than %s",
                            pruned,
                            before.isoformat(),
                        )
            except (
                StorageUnavailable,
                SerializationConflict,
                errors.DatabaseUnavailable,
                errors.Contention,
            ) as exc:
                log.warning("sweep skipped: %s", exc)
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self._settings.interval_s)
