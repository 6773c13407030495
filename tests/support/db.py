"""A fresh database per test run: on LEDGER_TEST_DATABASE_URL's server, else embedded."""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class TestDatabase:
    __test__ = False  # a fixture's helper, not a test class (pytest would try to collect it)

    admin_url: str
    name: str
    url: str
    _embedded: Any = None

    @classmethod
    async def create(cls, prefix: str = "ledger_test") -> TestDatabase:
        admin = os.environ.get("LEDGER_TEST_DATABASE_URL", "")
        embedded = None
        if not admin:
            import pgserver

            root = Path(
                os.environ.get(
                    "LEDGER_TEST_PGDATA", Path(tempfile.gettempdir()) / "creditledger-test-pg"
                )
            )
            embedded = pgserver.get_server(root, cleanup_mode="stop")
            admin = embedded.get_uri()
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return cls(admin, name, with_database(admin, name), embedded)

    async def drop(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()
