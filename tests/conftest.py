"""Fixtures: a fresh database per run, a real server on loopback, real stubs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creditledger.v1.ledger_pb2_grpc import LedgerServiceAsyncStub

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc

from ledger.app import App
from ledger.config import Config
from ledger.service.clock import OffsetClock
from tests.support.db import TestDatabase

# `ledger serve` with a database URL checks the schema instead of migrating
# (docs/security.md): the servers the tests start as processes get fresh
# databases, so they are told to migrate at start (an explicit choice there).
os.environ.setdefault("LEDGER_MIGRATE_AT_START", "1")


@pytest.fixture(scope="session")
async def test_database() -> AsyncIterator[TestDatabase]:
    db = await TestDatabase.create()
    yield db
    await db.drop()


@pytest.fixture(scope="session")
def database_url(test_database: TestDatabase) -> str:
    return test_database.url


@dataclass
class RunningServer:
    app: App
    clock: OffsetClock

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.app.metrics_port}/metrics"


@pytest.fixture(scope="session")
async def ledger_server(database_url: str) -> AsyncIterator[RunningServer]:
    """An in-process server (real grpc.aio on loopback, real PostgreSQL) with a movable clock."""
    clock = OffsetClock()
    app = App(
        Config(
            listen="127.0.0.1:0",
            database_url=database_url,
            metrics_listen="127.0.0.1:0",
            sweep_interval_s=0.2,
            drain_s=2.0,
        ),
        clock=clock,
    )
    await app.start()
    yield RunningServer(app, clock)
    await app.stop()


@pytest.fixture(scope="session")
async def channel(ledger_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(ledger_server.target) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> LedgerServiceAsyncStub:
    return ledger_pb2_grpc.LedgerServiceStub(channel)


def key() -> str:
    return uuid.uuid4().hex


async def new_account(
    stub: LedgerServiceAsyncStub,
    prefix: str = "acct",
    grant: int = 0,
    asset: str = "crm_credits",
) -> str:
    account_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account_id))
    if grant:
        await stub.Grant(
            pb.GrantRequest(account_id=account_id, asset=asset, amount=grant, idempotency_key=key())
        )
    return account_id
