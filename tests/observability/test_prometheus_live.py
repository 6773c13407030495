"""A real Prometheus scrapes a live ledger with deploy/prometheus's config and rules.

The ledger runs on loopback; Prometheus (Debian's package) gets the config of
deploy/prometheus/prometheus.yml with the target replaced and 1 s intervals.
Traffic goes through the generated stubs; then Prometheus's HTTP API must show
it, and every query of the Grafana dashboard must run and return data.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2_grpc as pb_grpc

from tests.observability.files import (
    JOB,
    PanelQuery,
    dashboard,
    expand_variables,
    panel_queries,
    prometheus_config_for,
    rules,
)
from tests.observability.ledger_process import live_ledger
from tests.observability.promserver import (
    POLL_INTERVAL_S,
    PrometheusServer,
    all_finite_positive,
    require_tool,
    values,
)
from tests.observability.traffic import account_lifecycle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SCRAPE_INTERVAL = "1s"
# Each wait is a few scrapes; the bound only matters when something is broken.
WAIT_S = 20.0
# What Grafana would put in the dashboard's variables for this setup.
GRAFANA_VALUES = {"job": JOB, "instance": ".*", "__rate_interval": "1m", "__range": "5m"}
LATENCY_PANEL = "Latency p50 / p95 / p99"
# go-grpc-prometheus spells codes as Go does (FailedPrecondition, Canceled).
GRPC_CODES = {
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}  # fmt: skip
# Alerts that are rightly pending here: this test runs no scheduled `ledger verify`
# and no Pushgateway, so nothing has ever proven the ledger.
PENDING_WITHOUT_VERIFY = {"LedgerVerifyStale"}


def _dashboard_p99() -> PanelQuery:
    (query,) = [
        q for q in panel_queries(dashboard()) if q.panel == LATENCY_PANEL and q.legend == "p99"
    ]
    return query


async def test_prometheus_scrapes_the_ledger_and_runs_every_dashboard_query(
    database_url: str, tmp_path: Path
) -> None:
    require_tool("prometheus")
    run = uuid.uuid4().hex[:10]
    with live_ledger(database_url, tmp_path) as ledger:
        config = prometheus_config_for(ledger.metrics_address, SCRAPE_INTERVAL)
        prometheus = PrometheusServer(config, tmp_path)
        try:
            prometheus.start()
            prometheus.wait_for(f'up{{job="{JOB}"}}', lambda r: values(r) == [1.0], WAIT_S, "up")
            async with grpc.aio.insecure_channel(ledger.target) as channel:
                stub = pb_grpc.LedgerServiceStub(channel)
                await account_lifecycle(stub, f"obs-{run}-1")
                # rate() needs the counters scraped before and after an increase:
                # wait for a scrape of the first round before the second.
                prometheus.wait_for(
                    f'grpc_server_handled_total{{job="{JOB}", grpc_method="Settle"}}',
                    bool,
                    WAIT_S,
                    "the first round of RPCs scraped",
                )
                await account_lifecycle(stub, f"obs-{run}-2")
            _assert_prometheus_sees_the_traffic(prometheus)
            _assert_every_dashboard_query_returns_data(prometheus)
            _assert_rules_evaluate_and_stay_quiet(prometheus)
        finally:
            prometheus.stop()


def _assert_prometheus_sees_the_traffic(prometheus: PrometheusServer) -> None:
    prometheus.wait_for(
        f'sum(rate(grpc_server_handled_total{{job="{JOB}"}}[1m]))',
        all_finite_positive,
        WAIT_S,
        "rate of handled RPCs",
    )
    prometheus.wait_for(
        f'sum(ledger_rejections_total{{job="{JOB}", reason="INSUFFICIENT_CREDITS"}})',
        lambda r: values(r) == [2.0],
        WAIT_S,
        "the two refused charges counted as INSUFFICIENT_CREDITS",
    )
    p99 = expand_variables(_dashboard_p99().expr, GRAFANA_VALUES)
    result = prometheus.wait_for(
        p99, lambda r: len(r) == 1 and math.isfinite(values(r)[0]), WAIT_S, "dashboard p99"
    )
    assert 0 < values(result)[0] < 10, f"p99 of a handful of local RPCs: {result}"
    # The SLO and error-ratio rules match codes by their go-grpc-prometheus names.
    codes = {s["metric"]["grpc_code"] for s in prometheus.query("grpc_server_handled_total")}
    assert codes <= GRPC_CODES, f"grpc_code values not spelled as go-grpc-prometheus does: {codes}"
    assert {"OK", "FailedPrecondition"} <= codes, codes


def _assert_every_dashboard_query_returns_data(prometheus: PrometheusServer) -> None:
    """Every panel query runs (a PromQLError fails at once) and, once rules ran, has data."""
    empty = []
    for query in panel_queries(dashboard()):
        expr = expand_variables(query.expr, GRAFANA_VALUES)
        assert not re.search(r"\$\w", expr), expr
        try:
            prometheus.wait_for(expr, bool, WAIT_S / 4, f"{query.panel} {query.ref_id}")
        except AssertionError:
            empty.append(f"{query.panel} [{query.ref_id}]: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def _assert_rules_evaluate_and_stay_quiet(prometheus: PrometheusServer) -> None:
    """Every rule evaluated without error on real series; a healthy ledger raises no alert."""
    loaded = {rule["name"] for rule in prometheus.rules()}
    assert loaded == {r.get("alert") or r["record"] for r in rules("alert") + rules("record")}
    deadline = time.monotonic() + WAIT_S
    while any(r["health"] == "unknown" for r in prometheus.rules()):
        assert time.monotonic() < deadline, f"rules never evaluated: {prometheus.rules()}"
        time.sleep(POLL_INTERVAL_S)
    failing = [(r["name"], r.get("lastError")) for r in prometheus.rules() if r["health"] != "ok"]
    assert not failing, f"rules failing on the live series: {failing}"
    alerts = {
        (a["metric"]["alertname"], a["metric"]["alertstate"]) for a in prometheus.query("ALERTS")
    }
    expected = {(name, "pending") for name in PENDING_WITHOUT_VERIFY}
    assert alerts <= expected, f"alerts pending or firing on a healthy ledger: {alerts - expected}"
