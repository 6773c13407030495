"""A live ledger for the observability tests: the shared ServerProcess, its metrics port known."""

from __future__ import annotations

import asyncio
import concurrent.futures
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tests.support.db import TestDatabase
from tests.support.process import ServerProcess

T = TypeVar("T")

SCRAPE_TIMEOUT_S = 5.0
START_TIMEOUT_S = 30.0

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class LiveLedger:
    """Where a running ledger answers gRPC and /metrics."""

    target: str
    metrics_address: str
    log_path: Path

    def scrape(self) -> str:
        """The text of /metrics."""
        url = f"http://{self.metrics_address}/metrics"
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            text: str = response.read().decode()
            return text


def _in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from sync code, even under a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextmanager
def live_ledger(
    database_url: str, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[LiveLedger]:
    """A `ledger serve` subprocess on loopback (a fresh metrics registry), stopped on the way out.

    Its log goes to workdir/ledger.log.
    """
    # A database of its own: on the session's, the session server is the elected writer
    # and the movements (ledger_credits_moved_total) would be counted in its registry.
    db = _in_thread(TestDatabase.create("ledger_live"))
    server = ServerProcess(db.url, log_path=workdir / "ledger.log", env=env)
    try:
        server.start(wait_s=START_TIMEOUT_S)
        yield LiveLedger(server.target, f"127.0.0.1:{server.metrics_port}", workdir / "ledger.log")
    finally:
        # stop() drains with SIGTERM and falls back to SIGKILL: never leaves it running.
        server.stop()
        _in_thread(db.drop())


def series(text: str) -> set[SeriesKey]:
    """The identity (name and labels) of every sample of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
