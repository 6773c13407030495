"""Pytest fixtures shared by tests/torture, tests/faults and tests/hostile.

PostgreSQL is the suite's (tests/conftest.py: LEDGER_TEST_DATABASE_URL when
set, else the embedded one); every test here gets a fresh database in it and
its own server subprocess, since these tests kill, pause and cut things.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.db import TestDatabase
from tests.torture.pg import create_database, drop_database
from tests.torture.server import LedgerServer

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, in a thread of its own.

    A thread, so that it never touches the event loop pytest-asyncio keeps.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_admin_url(test_database: TestDatabase) -> str:
    """The PostgreSQL of the suite (tests/conftest.py): LEDGER_TEST_DATABASE_URL or embedded."""
    return test_database.admin_url


@pytest.fixture
def fresh_database_url(pg_admin_url: str) -> Iterator[str]:
    """A new empty database for one test, dropped after it."""
    url = run_sync(create_database(pg_admin_url, "ledger_fault"))
    yield url
    run_sync(drop_database(pg_admin_url, url))


@pytest.fixture
def ledger_process(fresh_database_url: str, tmp_path: Path) -> Iterator[LedgerServer]:
    """A `ledger serve` subprocess on a fresh database."""
    server = LedgerServer(fresh_database_url, tmp_path / "server.log")
    server.start()
    yield server
    server.stop()
