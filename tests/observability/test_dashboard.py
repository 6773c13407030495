"""deploy/grafana: the dashboard is provisioning-ready and queries only the metrics contract.

That every query runs against a real Prometheus is test_prometheus_live.py's job.
"""

from __future__ import annotations

import pytest

from tests.observability.files import (
    BUILTIN_LABELS,
    GRAFANA_DIR,
    contract,
    dashboard,
    expand_variables,
    label_names,
    load_yaml,
    metric_names,
    panel_queries,
    panels,
    rules,
)

pytestmark = pytest.mark.timeout(30)

# What an operator must find on the dashboard (issue 4), by words of panel titles.
REQUIRED_PANELS = [
    "rpc rate by method and code",
    "p50 / p95 / p99",
    "credits flowing by asset and movement",
    "rejections by reason",
    "idempotent replays",
    "serialization retries",
    "db pool",
    "open reservations",
    "oldest overdue",
]
# Every variable a query may use; the live test gives each of these a value.
VARIABLES = {"job", "instance", "__rate_interval", "__range"}


def test_dashboard_has_the_required_panels() -> None:
    titles = [p["title"].lower() for p in panels(dashboard())]
    missing = [want for want in REQUIRED_PANELS if not any(want in title for title in titles)]
    assert not missing, f"no panel for {missing}; panels are {titles}"


def test_dashboard_is_provisioning_ready() -> None:
    dash = dashboard()
    assert dash["uid"] == "creditledger"
    # Provisioned dashboards cannot resolve an import-time ${DS_...} input: use a variable.
    assert "__inputs" not in dash
    assert dash.get("id") is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dash):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_queries_use_only_known_variables() -> None:
    for query in panel_queries(dashboard()):
        expand_variables(query.expr, {name: "x" for name in VARIABLES})


def test_dashboard_reads_only_contract_metrics_and_labels() -> None:
    metrics = contract()
    known_labels = set().union(*metrics.values()) | BUILTIN_LABELS | {"grpc_code"}
    records = {rule["record"] for rule in rules("record")}
    for query in panel_queries(dashboard()):
        unknown = metric_names(query.expr) - set(metrics) - {"up"}
        assert not unknown, (
            f"{query.panel}: {query.expr} reads metrics outside docs/design.md: {unknown}"
        )
        labels = label_names(query.expr, query.legend) - known_labels
        assert not labels, f"{query.panel}: uses labels outside docs/design.md: {labels}"
        for name in (w for w in query.expr.replace("{", " ").split() if w.count(":") == 2):
            assert name in records, f"{query.panel}: {name} is not a recording rule"


def test_every_contract_metric_is_on_the_dashboard() -> None:
    shown = set().union(*(metric_names(q.expr) for q in panel_queries(dashboard())))
    shown |= set().union(*(metric_names(r["expr"]) for r in rules("record")))
    # Info metrics a dashboard need not plot beyond the version panel are still expected.
    missing = set(contract()) - shown
    assert not missing, f"contract metrics no panel shows: {sorted(missing)}"


def test_grafana_provisioning_files() -> None:
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    providers = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "creditledger.yml")
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
