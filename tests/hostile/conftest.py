"""Fixtures: a fresh database and a server subprocess per test (tests/torture/fixtures.py)."""

from tests.torture.fixtures import fresh_database_url, ledger_process, pg_admin_url

__all__ = ["fresh_database_url", "ledger_process", "pg_admin_url"]
