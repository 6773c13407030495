"""`ledger verify --pushgateway URL`: the result of a run as metrics, pushed.

The scheduled verify (deploy/k8s/verify-cronjob.yaml, the compose service
`verify`) is a short-lived batch job: it pushes to a Prometheus Pushgateway,
the one place such a job's result can outlive its pod (docs/observability.md,
"The proof on a schedule"). A push replaces only the metrics it carries
(POST, pushadd), so a failing run leaves the last success's time in place.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

JOB = "creditledger-verify"
PUSH_TIMEOUT_S = 10.0


def push_result(
    url: str, *, ok: bool, violations: int, duration_s: float, finished_at_s: float
) -> None:
    """Raises OSError (URLError included) when the Pushgateway cannot be reached."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, registry=registry).set(value)

    gauge("ledger_verify_ok", "1 when the last ledger verify found every invariant.", ok)
    gauge(
        "ledger_verify_violations", "Invariants the last ledger verify found violated.", violations
    )
    gauge("ledger_verify_duration_seconds", "How long the last ledger verify took.", duration_s)
    gauge(
        "ledger_verify_last_run_timestamp_seconds",
        "When the last ledger verify finished (Unix time).",
        finished_at_s,
    )
    if ok:
        gauge(
            "ledger_verify_last_success_timestamp_seconds",
            "When the last passing ledger verify finished (Unix time).",
            finished_at_s,
        )
    pushadd_to_gateway(url, job=JOB, registry=registry, timeout=PUSH_TIMEOUT_S)
