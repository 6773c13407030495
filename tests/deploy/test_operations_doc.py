"""docs/operations.md states the server's real defaults, env names and alert names."""

from __future__ import annotations

import re

import pytest

from ledger.config import Config
from tests.deploy.files import (
    DEPLOY,
    REPO,
    env_names_read_by_the_server,
    yaml_documents,
)

pytestmark = pytest.mark.timeout(60)

DOC = (REPO / "docs" / "operations.md").read_text()


def _settings_row(flag: str) -> str:
    rows = [line for line in DOC.splitlines() if line.startswith(f"| `{flag}`")]
    assert len(rows) == 1, f"docs/operations.md: one settings row for {flag}"
    return rows[0]


def test_documented_defaults_are_the_servers() -> None:
    defaults = Config()
    assert f"| {defaults.pool_size_max} |" in _settings_row("--pool-size-max")
    assert f"| {defaults.idempotency_retention_days:g} |" in _settings_row(
        "--idempotency-retention-days"
    )
    assert f"| {defaults.drain_s:g} |" in _settings_row("--drain-s")


def test_every_env_var_the_doc_names_is_read_by_the_server() -> None:
    named = set(re.findall(r"\bLEDGER_[A-Z0-9_]+\b", DOC))
    assert named
    unknown = named - env_names_read_by_the_server()
    assert not unknown, f"docs/operations.md names variables no code reads: {sorted(unknown)}"


def test_every_alert_in_the_runbooks_exists() -> None:
    rules = yaml_documents(DEPLOY / "prometheus" / "rules" / "alerts.yml")[0]
    alerts = {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }
    named = set(re.findall(r"`(Ledger[A-Za-z0-9]+)`", DOC))
    assert named, "the runbooks name their alerts"
    assert named <= alerts, f"not in deploy/prometheus/rules/alerts.yml: {sorted(named - alerts)}"
