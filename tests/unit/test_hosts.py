"""Multi-host URLs split into one URL per host (ledger/storage/hosts.py)."""

from __future__ import annotations

import pytest

from ledger.storage.hosts import _mismatch, parse_hosts

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@db:5432/ledger",
        "postgresql://u@db/ledger?target_session_attrs=read-write",
        "postgresql:///ledger?host=/tmp/sock",
        "",
    ],
)
def test_one_host_is_left_to_asyncpg(url: str) -> None:
    assert parse_hosts(url) is None


def test_each_host_gets_the_rest_of_the_url_without_the_role() -> None:
    found = parse_hosts(
        "postgresql://led:pw@a:1,b:2,[::1]:3/ledger?sslmode=require&target_session_attrs=read-write"
    )
    assert found is not None
    assert found.hosts == ("a:1", "b:2", "[::1]:3")
    assert found.target == "read-write"
    assert found.urls == (
        "postgresql://led:pw@a:1/ledger?sslmode=require",
        "postgresql://led:pw@b:2/ledger?sslmode=require",
        "postgresql://led:pw@[::1]:3/ledger?sslmode=require",
    )


def test_default_role_is_any_and_an_unknown_one_is_refused() -> None:
    found = parse_hosts("postgres://a,b/db")
    assert found is not None and found.target == "any" and found.urls[1] == "postgres://b/db"
    with pytest.raises(ValueError, match="target_session_attrs"):
        parse_hosts("postgresql://a,b/db?target_session_attrs=primary-ish")


@pytest.mark.parametrize(
    ("target", "standby", "read_only", "why"),
    [
        ("read-write", False, False, ""),
        ("read-write", True, True, "a standby (in recovery), not read-write"),
        (
            "read-write",
            False,
            True,
            "read-only (default_transaction_read_only = on), not read-write",
        ),
        ("primary", False, True, ""),
        ("standby", True, True, ""),
        ("standby", False, False, "a primary (not in recovery), not standby"),
        ("standby", False, True, "a primary (not in recovery), not standby"),
        ("read-only", False, True, ""),
        ("read-only", False, False, "read-write, not read-only"),
        ("any", True, True, ""),
    ],
)
def test_role_fit(target: str, standby: bool, read_only: bool, why: str) -> None:
    assert _mismatch(target, standby, read_only) == why
