"""deploy/k8s/prometheusrule.yaml: the rules of deploy/prometheus/rules/ for the Prometheus Operator.

The Operator loads rules from PrometheusRule objects, not files. This module
wraps the groups of every deploy/prometheus/rules/*.yml, unchanged, in one
PrometheusRule, so clusters with the Operator get the same alerts and
recording rules as compose (which mounts the files). The rules stay written
once; tests/deploy/test_k8s.py fails when the wrapper is stale.

    python -m tests.deploy.prometheus_rule           # exit 1 when stale
    python -m tests.deploy.prometheus_rule --write   # regenerate it
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from tests.deploy.files import DEPLOY, K8S, REPO, yaml_documents

RULES = DEPLOY / "prometheus" / "rules"
TARGET = K8S / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules/*.yml by
# `python -m tests.deploy.prometheus_rule --write`; edit those files, not this.
# The Prometheus Operator's form of the same recording and alert rules. The
# ServiceMonitor gives the scraped series job="creditledger", as they expect.
# Your Prometheus selects PrometheusRules by label (ruleSelector): add yours
# to metadata.labels here or in an overlay.
"""


def rule_object() -> dict[str, Any]:
    groups: list[Any] = []
    for path in sorted(RULES.glob("*.yml")):
        for doc in yaml_documents(path):
            groups.extend(doc.get("groups", []))
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "creditledger",
            "labels": {
                "app.kubernetes.io/name": "creditledger",
                "app.kubernetes.io/part-of": "creditledger",
            },
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    body = yaml.safe_dump(rule_object(), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate deploy/k8s/prometheusrule.yaml")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    fresh = render()
    relative = TARGET.relative_to(REPO)
    if args.write:
        TARGET.write_text(fresh)
        print(f"wrote {relative}")
        return 0
    if TARGET.exists() and TARGET.read_text() == fresh:
        print(f"{relative} is up to date")
        return 0
    print(f"{relative} is stale: run python -m tests.deploy.prometheus_rule --write")
    return 1


if __name__ == "__main__":
    sys.exit(main())
