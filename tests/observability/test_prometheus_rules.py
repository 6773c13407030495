"""deploy/prometheus: the config and rules pass promtool, and every alert is unit-tested both ways."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.observability.files import (
    BUILTIN_LABELS,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULE_TESTS,
    contract,
    label_names,
    load_yaml,
    metric_names,
    pushed_contract,
    rules,
)
from tests.observability.promserver import require_tool

pytestmark = pytest.mark.timeout(120)

PROMTOOL_TIMEOUT_S = 90


def _promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    done = subprocess.run(
        [require_tool("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_check_config() -> None:
    # Also checks every rule file the config names.
    _promtool("check", "config", str(PROMETHEUS_CONFIG))


def test_promtool_check_rules() -> None:
    assert RULE_FILES, f"no rule files under {PROMETHEUS_DIR / 'rules'}"
    _promtool("check", "rules", *map(str, RULE_FILES))


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, f"no promtool unit tests under {PROMETHEUS_DIR / 'tests'}"
    output = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert "FAILED" not in output, output


def test_config_loads_every_rule_file() -> None:
    named = {(PROMETHEUS_DIR / p).resolve() for p in load_yaml(PROMETHEUS_CONFIG)["rule_files"]}
    assert named == {p.resolve() for p in RULE_FILES}


def _alert_tests() -> dict[str, list[bool]]:
    """For each alert name, one bool per alert_rule_test case: whether it expects a firing alert."""
    found: dict[str, list[bool]] = {}
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                found.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    return found


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tested = _alert_tests()
    alerts = [rule["alert"] for rule in rules("alert")]
    assert alerts, "no alerts"
    missing = [
        name for name in alerts if True not in tested.get(name, []) or False not in tested[name]
    ]
    assert not missing, f"alerts without a firing and a silent promtool test: {missing}"
    unknown = set(tested) - set(alerts)
    assert not unknown, f"promtool tests of alerts that do not exist: {unknown}"


def test_every_alert_has_severity_and_runbook() -> None:
    for rule in rules("alert"):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"docs/observability.md#{anchor}"
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_rules_read_only_contract_metrics_and_labels() -> None:
    metrics = contract()
    known_labels = set().union(*metrics.values()) | BUILTIN_LABELS | {"grpc_code"}
    records = {rule["record"] for rule in rules("record")}
    for rule in rules("alert") + rules("record"):
        expr = rule["expr"]
        unknown = metric_names(expr) - set(metrics) - pushed_contract() - {"up"}
        assert not unknown, f"{expr} reads metrics outside docs/design.md: {unknown}"
        labels = label_names(expr) - known_labels
        assert not labels, f"{expr} uses labels outside docs/design.md: {labels}"
    for record in records:
        assert record.count(":") == 2, (
            f"{record}: recording rules are named level:metric:operations"
        )
