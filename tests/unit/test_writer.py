"""The writer's retry policy, against a fake store whose transactions always fail."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.observability import metrics
from ledger.service.clock import SystemClock
from ledger.service.ports import SerializationConflict, StorageUnavailable
from ledger.service.writer import Writer, WriterSettings


class FailingStore:
    """Every batch transaction fails with the given exception."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.attempts = 0
        self.reachable = True

    @asynccontextmanager
    async def batch(self, more_waiting: Callable[[], bool] | None = None) -> AsyncIterator[Any]:
        self.attempts += 1
        raise self.exc
        yield  # pragma: no cover


def counter(metric: Any) -> float:
    return float(metric._value.get())


async def test_contention_after_bounded_retries() -> None:
    store = FailingStore(SerializationConflict("40001"))
    settings = WriterSettings(retry_attempts_max=4, retry_backoff_base_s=0.0001)
    writer = Writer(store, SystemClock(), settings)  # type: ignore[arg-type]
    retries_before = counter(metrics.SERIALIZATION_RETRIES)
    exhausted_before = counter(metrics.RETRIES_EXHAUSTED)
    writer.start()
    try:
        with pytest.raises(errors.Contention) as err:
            await writer.submit(c.Charge("caller", "k", "a", "crm", 1))
    finally:
        await writer.stop()
    assert store.attempts == 4
    assert err.value.metadata["attempts"] == "4"
    assert counter(metrics.SERIALIZATION_RETRIES) - retries_before == 4
    assert counter(metrics.RETRIES_EXHAUSTED) - exhausted_before == 1


async def test_unavailable_after_a_bounded_reconnect() -> None:
    store = FailingStore(StorageUnavailable("connection reset"))
    writer = Writer(store, SystemClock(), WriterSettings(unavailable_retries_max=2))  # type: ignore[arg-type]
    writer.start()
    try:
        with pytest.raises(errors.DatabaseUnavailable):
            await writer.submit(c.Charge("caller", "k", "a", "crm", 1))
        store.attempts = 0
        store.reachable = False  # a failed health check: no reconnect attempts, fail at once
        with pytest.raises(errors.DatabaseUnavailable):
            await writer.submit(c.Charge("caller", "k2", "a", "crm", 1))
    finally:
        await writer.stop()
    assert store.attempts == 1
