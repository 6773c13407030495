"""Background work: expire overdue reservations and lots, keep gauges fresh,
keep the idempotency key store ready ahead and drop its expired partitions.

It runs only in the process that holds the writer lease
(ledger.service.election) and submits ExpireDue commands to that writer,
which re-reads the rows inside a SERIALIZABLE transaction: a sweep that
races with a command on the same reservation finds it already done.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.observability import metrics
from ledger.service.clock import Clock
from ledger.service.ports import CommandSink, SerializationConflict, StorageUnavailable, Store
from ledger.service.retention import IdempotencyRetention
from ledger.service.tasks import stop_task

log = logging.getLogger("ledger.sweeper")


@dataclass(frozen=True)
class SweeperSettings:
    interval_s: float = 1.0
    batch_max: int = 500
    retention: IdempotencyRetention = field(default_factory=IdempotencyRetention)
    # Creating and dropping partitions is a few catalog statements: every 10 s
    # keeps the keys physically kept within retention + one partition + 10 s.
    maintain_every_s: float = 10.0
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
            await stop_task(self._task)
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

    async def maintain_once(self) -> tuple[int, int]:
        """Partitions ready up to the longest retention ahead; expired ones dropped."""
        now = self._clock.now()
        with metrics.TRANSACTION_SECONDS.labels("idempotency_maintenance").time():
            created, dropped = await self._store.maintain_idempotency(
                now, now + self._settings.retention.horizon()
            )
        if created or dropped:
            log.info(
                "idempotency partitions: %d created, %d expired ones dropped", created, dropped
            )
        self.partitions_ahead_s(now)
        return created, dropped

    def partitions_ahead_s(self, now: datetime) -> float | None:
        """How long the partitions stay ready for new keys (the gauge
        ledger_idempotency_partitions_ahead_seconds); None before the first look."""
        ready = self._store.idempotency_ready_until()
        if ready is None:
            return None
        ahead_s = (ready - (now + self._settings.retention.horizon())).total_seconds()
        by = "server" if self._store.maintains_idempotency() else "external"
        metrics.IDEMPOTENCY_PARTITIONS_AHEAD_S.labels(by).set(ahead_s)
        return ahead_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_maintained = -self._settings.maintain_every_s  # once at start
        while True:
            try:
                for _ in range(self._settings.catch_up_rounds_max):
                    if await self.sweep_once() < self._settings.batch_max:
                        break  # nothing more is due: sleep
                open_count, overdue_s = await self._store.reservation_stats(self._clock.now())
                metrics.OPEN_RESERVATIONS.set(open_count)
                metrics.OLDEST_OVERDUE_S.set(overdue_s)
                if loop.time() - last_maintained >= self._settings.maintain_every_s:
                    last_maintained = loop.time()
                    await self.maintain_once()
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
