"""Fixtures: a fresh database per test (tests/torture/fixtures.py), for read_cost's smoke."""

from tests.torture.fixtures import fresh_database_url, pg_admin_url

__all__ = ["fresh_database_url", "pg_admin_url"]
