"""A live ledger for the observability tests: the shared ServerProcess, its metrics port known."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import ServerProcess

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


@contextmanager
def live_ledger(
    database_url: str, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[LiveLedger]:
    """A `ledger serve` subprocess on loopback (a fresh metrics registry), stopped on the way out.

    Its log goes to workdir/ledger.log.
    """
    server = ServerProcess(database_url, log_path=workdir / "ledger.log", env=env)
    try:
        server.start(wait_s=START_TIMEOUT_S)
        yield LiveLedger(server.target, f"127.0.0.1:{server.metrics_port}", workdir / "ledger.log")
    finally:
        # stop() drains with SIGTERM and falls back to SIGKILL: never leaves it running.
        server.stop()


def series(text: str) -> set[SeriesKey]:
    """The identity (name and labels) of every sample of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
