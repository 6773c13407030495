"""Stopping a background task, for good.

`task.cancel()` is a request, and a request can be lost: on Python 3.11,
`asyncio.wait_for` returns its inner result and drops the cancellation when
the inner work finishes in the same loop turn as the cancel arrives (fixed in
3.12; tests/faults/test_writer_stop.py), and any library that catches
CancelledError can do the same. The ledger times its awaits with
`asyncio.timeout`, which keeps an outside cancel; and every stop goes
through `stop_task`, which cancels again until the task has ended, so that
a stop that returns is a task that ended, and a lost cancel costs a warning
and a second, not a process that hangs in its step-down for ever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("ledger.tasks")

# How long a cancelled task may take to end before it is cancelled again: a
# cancelled batch drops its connection at once, a forwarded call ends with its
# channel; none of their clean-ups waits this long.
RECANCEL_AFTER_S = 2.0


async def stop_task(task: asyncio.Task[Any], recancel_after_s: float = RECANCEL_AFTER_S) -> None:
    """Cancel `task` and return once it has ended (cancelled, or finished anyway).
    Errors: the task's own exception, when it failed rather than stopped."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=recancel_after_s)
        if not task.done():
            log.warning(
                "task %s still running %.1f s after it was cancelled: cancelling it again",
                task.get_name(),
                recancel_after_s,
            )
    if not task.cancelled():
        task.result()
