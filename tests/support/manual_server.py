"""An in-process server whose clock moves only when the test moves it, and
whose sweeper runs only when the test asks: for "right at the instant it is
due, before any background work" tests, through the real stubs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from ledger.config import Config
from tests.support.db import TestDatabase

T = TypeVar("T")


class ManualClock:
    """The server's clock: moves only when the test moves it."""

    def __init__(self) -> None:
        self.t = datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t


class ServerThread:
    """An App on its own event loop in a thread, so that rules can call it synchronously."""

    def __init__(self, database_url: str, refund_grace_s: float = 7 * 86400.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clock = ManualClock()
        # A database of its own: with one elected writer per database (docs/design.md),
        # an App sharing the session's database would forward its commands to the
        # session server's writer, which runs them at ITS clock, not this one's.
        # (`database_url`, the session's, is only the caller's hint: see above.)
        self._db = self.run(TestDatabase.create("ledger_manual"))
        self.database_url = self._db.url
        self.app = App(
            Config(
                listen="127.0.0.1:0",
                database_url=self.database_url,
                metrics_listen="",
                sweep_interval_s=86400.0,  # the test sweeps when it wants: sweep()
                refund_grace_s=refund_grace_s,
                drain_s=0.5,
            ),
            clock=self.clock,
        )
        self.run(self.app.start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.stub = ledger_pb2_grpc.LedgerServiceStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def sweep(self) -> None:
        self.run(self.app.sweeper.sweep_once())

    def advance(self, delta: timedelta) -> None:
        self.clock.t += delta

    def close(self) -> None:
        self.channel.close()
        self.run(self.app.stop())
        self.run(self._db.drop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
