"""Batch units (ledger.service.ports.BatchUnit) for writer tests: an in-memory
unit's save_ahead, and the real PgBatch wrapped with a hook before each write."""

from __future__ import annotations

import asyncio
from typing import Any

from ledger.domain.rules import WorkingSet
from ledger.service.ports import IdempotencyRecord
from ledger.storage.postgres import PgBatch


class SavesInLine:
    """save_ahead for a unit whose save() is done when it returns: it saves,
    then hands back a future already finished."""

    async def save(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> None:
        raise NotImplementedError

    async def save_ahead(
        self, ws: WorkingSet, records: list[IdempotencyRecord]
    ) -> asyncio.Future[None]:
        await self.save(ws, records)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class WrappedUnit:
    """The real PgBatch; `before_write` runs before each of its writes (save
    and save_ahead alike)."""

    def __init__(self, unit: PgBatch) -> None:
        self._unit = unit

    async def before_write(self, ws: WorkingSet) -> None:
        """Nothing by default."""

    async def load(self, ws: WorkingSet, *args: Any, **kwargs: Any) -> Any:
        return await self._unit.load(ws, *args, **kwargs)

    async def save(self, ws: WorkingSet, records: list[IdempotencyRecord]) -> None:
        await self.before_write(ws)
        await self._unit.save(ws, records)

    async def save_ahead(
        self, ws: WorkingSet, records: list[IdempotencyRecord]
    ) -> asyncio.Future[None]:
        await self.before_write(ws)
        return await self._unit.save_ahead(ws, records)
