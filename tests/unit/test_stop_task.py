"""`stop_task` ends a task even when the first cancel is lost (ledger.service.tasks)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ledger.service.tasks import stop_task


async def _loses_the_first_cancel(cancels_seen: list[int]) -> None:
    """What a lost cancel looks like from outside: the task goes on waiting, as
    the Writer did when asyncio.wait_for dropped its stop."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancels_seen.append(1)
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
    await asyncio.Event().wait()


async def test_a_task_that_loses_the_first_cancel_is_stopped_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancels_seen: list[int] = []
    task = asyncio.create_task(_loses_the_first_cancel(cancels_seen), name="deaf")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="ledger.tasks"):
        await asyncio.wait_for(stop_task(task, recancel_after_s=0.05), 5)
    assert task.cancelled()
    assert cancels_seen == [1], "the first cancel reached the task"
    assert "task deaf still running" in caplog.text, "the lost cancel is reported"


async def test_a_task_that_ends_at_once_is_stopped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="ledger.tasks"):
        await stop_task(task)
    assert task.cancelled() and not caplog.text


async def test_a_task_that_failed_raises_its_error() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await stop_task(task)
