"""deploy/k8s: every manifest valid against the Kubernetes schemas (offline) and consistent.

kubernetes-validate ships the OpenAPI-derived JSON schemas of each Kubernetes
release inside the wheel, so this needs no cluster and no network. Strict mode
rejects unknown fields (a misspelt `readOnlyRootFileSystem` would otherwise be
silently dropped by the API server). Kinds without a bundled schema (the
Prometheus Operator's ServiceMonitor, kustomize's Kustomization) are checked by
hand below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy import prometheus_rule
from tests.deploy.files import K8S, SERVER_DRAIN_SECONDS_MAX, port_of, yaml_documents

kv_utils = pytest.importorskip(
    "kubernetes_validate.utils", reason="kubernetes-validate not installed (part of the dev extras)"
)

pytestmark = pytest.mark.timeout(60)

# The oldest Kubernetes minor the manifests promise to fit, and the newest known.
OLDEST_VERSION = "1.30"
VERSIONS = sorted({OLDEST_VERSION, kv_utils.latest_version()})
UNSCHEMAED_KINDS = {"ServiceMonitor", "PrometheusRule", "Kustomization", "Certificate"}
EXAMPLES = {"secrets.example.yaml", "certificate.example.yaml"}


def _kustomization() -> dict[str, Any]:
    return yaml_documents(K8S / "kustomization.yaml")[0]


def _manifest_files() -> list[Path]:
    return [K8S / name for name in _kustomization()["resources"]] + [K8S / n for n in EXAMPLES]


def _all() -> list[dict[str, Any]]:
    docs = [doc for path in _manifest_files() for doc in yaml_documents(path)]
    return [doc for doc in docs if doc["kind"] not in {"Secret"}]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in _all() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} documents"
    return found[0]


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _server() -> dict[str, Any]:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _config() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap")["data"]
    return data


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest_and_no_secret() -> None:
    kustomization = _kustomization()
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} - EXAMPLES
    assert listed == on_disk
    for path in listed:
        kinds = {doc["kind"] for doc in yaml_documents(K8S / path)}
        assert "Secret" not in kinds, f"{path}: secrets do not belong in git"
    images = {image["name"] for image in kustomization["images"]}
    assert _server()["image"].split(":")[0] in images


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in yaml_documents(path):
        if doc["kind"] in UNSCHEMAED_KINDS:
            with pytest.raises(kv_utils.SchemaNotFoundError):
                kv_utils.validate(doc, VERSIONS[-1], strict=True)
            continue
        for version in VERSIONS:
            try:
                kv_utils.validate(doc, version, strict=True)
            except kv_utils.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{path.name} {doc['kind']} on {version}: {where}: {exc.message}")


def test_the_schema_check_catches_a_misspelt_field() -> None:
    """Guards the guard: strict validation must reject what the API server would drop."""
    deployment = _one("Deployment")
    context = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kv_utils.ValidationError):
        kv_utils.validate(deployment, VERSIONS[-1], strict=True)


def test_deployment_runs_two_hardened_replicas() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = _pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    context = _server()["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    resources = _server()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert _selects(selector, deployment["spec"]["template"]["metadata"]["labels"])


def test_ports_probes_and_config_agree() -> None:
    server = _server()
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    config = _config()
    assert ports["grpc"] == port_of(config["LEDGER_LISTEN"])
    assert ports["metrics"] == port_of(config["LEDGER_METRICS_LISTEN"])
    assert ports["health"] == port_of(config["LEDGER_HEALTH_LISTEN"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Native gRPC probes cannot speak TLS: they ask the plaintext health-only port.
        assert server[probe]["grpc"]["port"] == ports["health"], f"{probe}: health port"
    for service in (d for d in _all() if d["kind"] == "Service"):
        assert _selects(
            service["spec"]["selector"],
            _one("Deployment")["spec"]["template"]["metadata"]["labels"],
        )
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port}"
            assert port["port"] == ports[port["targetPort"]]


def test_termination_grace_covers_the_pre_stop_sleep_and_the_server_drain() -> None:
    pre_stop = _server()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_seconds = int(pre_stop[1])
    assert 0 < sleep_seconds <= 10
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= sleep_seconds + SERVER_DRAIN_SECONDS_MAX + 5


def test_secrets_are_referenced_not_inlined() -> None:
    server = _server()
    database = {e["name"]: e for e in server["env"]}["LEDGER_DATABASE_URL"]
    assert "secretKeyRef" in database["valueFrom"]
    assert "LEDGER_DATABASE_URL" not in _config()
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    callers_dir = mounts["callers"]["mountPath"]
    assert mounts["callers"]["readOnly"] is True
    assert "secret" in volumes["callers"]
    assert _config()["LEDGER_CALLERS_FILE"].startswith(callers_dir + "/")
    # The example Secrets carry the names and keys the manifests reference.
    examples = {d["metadata"]["name"]: d for d in yaml_documents(K8S / "secrets.example.yaml")}
    reference = database["valueFrom"]["secretKeyRef"]
    assert reference["key"] in examples[reference["name"]]["stringData"]
    callers_secret = examples[volumes["callers"]["secret"]["secretName"]]
    assert _config()["LEDGER_CALLERS_FILE"].rsplit("/", 1)[1] in callers_secret["stringData"]


def test_migration_job_runs_migrate_as_the_owner_and_the_server_as_the_serving_role() -> None:
    """Two roles, two Secrets (issue 15): only the Job holds the owner's URL."""
    job = _one("Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == _server()["image"]
    assert container["envFrom"] == _server()["envFrom"]
    job_env = {e["name"]: e for e in container["env"]}
    server_env = {e["name"]: e for e in _server()["env"]}
    owner = job_env["LEDGER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    serving = server_env["LEDGER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert owner["name"] != serving["name"], "the server must not hold the owner's credentials"
    # The Job creates the serving role named in the ConfigMap, with the serving password.
    assert _config()["LEDGER_SERVING_ROLE"]
    password = job_env["LEDGER_SERVING_ROLE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password["name"] == serving["name"]
    examples = {d["metadata"]["name"]: d for d in yaml_documents(K8S / "secrets.example.yaml")}
    assert _config()["LEDGER_SERVING_ROLE"] in examples[serving["name"]]["stringData"]["url"]
    assert "owner" in examples[owner["name"]]["stringData"]["url"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_verify_cronjob_proves_the_ledger_hourly_and_pushes_the_result() -> None:
    cron = _one("CronJob", "creditledger-verify")
    spec = cron["spec"]
    assert spec["schedule"].split()[1:] == ["*", "*", "*", "*"], "hourly: stale after a day"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] < 3600, "a run ends before the next is due"
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["verify"]
    assert container["image"] == _server()["image"]
    assert container["envFrom"] == _server()["envFrom"]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["LEDGER_DATABASE_URL"]
        == {e["name"]: e for e in _server()["env"]}["LEDGER_DATABASE_URL"]
    )
    assert env["LEDGER_VERIFY_PUSHGATEWAY"]["value"].startswith("http")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_maintain_cronjob_runs_ledger_maintain_hourly_as_the_owner() -> None:
    """Partition maintenance is DDL: the owner's Secret (as the migration Job), never the
    server's; hourly, one at a time, hardened like the Job."""
    cron = _one("CronJob", "creditledger-maintain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    minute, hour, *rest = cron["spec"]["schedule"].split()
    assert minute.isdigit() and hour == "*" and rest == ["*", "*", "*"], "hourly"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["args"][0] == "maintain"
    assert container["image"] == _server()["image"]
    assert container["envFrom"] == _server()["envFrom"], "the server's retention settings"
    job = _one("Job")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    owner = {e["name"]: e for e in job["env"]}["LEDGER_DATABASE_URL"]
    assert env["LEDGER_DATABASE_URL"] == owner
    serving = {e["name"]: e for e in _server()["env"]}["LEDGER_DATABASE_URL"]
    assert env["LEDGER_DATABASE_URL"] != serving
    assert set(env) == {"LEDGER_DATABASE_URL"}, "no serving-role password here"
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_server_defaults_to_mutual_tls_with_a_caller_file() -> None:
    """No plaintext, no anonymous full access: TLS files and the caller file from Secrets."""
    server = _server()
    assert "--insecure" not in server["args"]
    assert "--allow-anonymous-full-access" not in server["args"]
    config = _config()
    assert "LEDGER_INSECURE" not in config and "LEDGER_ALLOW_ANONYMOUS_FULL_ACCESS" not in config
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    tls_dir = mounts["tls"]["mountPath"]
    assert mounts["tls"]["readOnly"] is True
    secret = volumes["tls"]["secret"]["secretName"]
    for key in ("LEDGER_TLS_CERT", "LEDGER_TLS_KEY", "LEDGER_TLS_CLIENT_CA"):
        assert config[key].startswith(tls_dir + "/"), key
    examples = {d["metadata"]["name"]: d for d in yaml_documents(K8S / "secrets.example.yaml")}
    assert examples[secret]["type"] == "kubernetes.io/tls"
    for key in ("LEDGER_TLS_CERT", "LEDGER_TLS_KEY", "LEDGER_TLS_CLIENT_CA"):
        assert config[key].rsplit("/", 1)[1] in examples[secret]["stringData"], key
    assert config["LEDGER_CALLERS_FILE"]
    # What cert-manager would make is the same Secret.
    certificate = yaml_documents(K8S / "certificate.example.yaml")[0]
    assert certificate["spec"]["secretName"] == secret


def test_network_policy_admits_callers_to_grpc_prometheus_to_metrics_replicas_to_internal() -> None:
    policy = _one("NetworkPolicy")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in rules}
    assert set(by_port) == {"grpc", "metrics", "internal"}, "nothing else is admitted"
    # The internal writer port: the ledger's own server pods only (they forward to the writer).
    (replicas,) = by_port["internal"]["from"]
    assert "namespaceSelector" not in replicas
    assert _selects(replicas["podSelector"]["matchLabels"], labels)
    for rule in rules:
        assert len(rule["ports"]) == 1 and rule.get("from"), rule  # no rule admits everyone
    grpc_from = by_port["grpc"]["from"]
    assert all("namespaceSelector" in peer and "podSelector" not in peer for peer in grpc_from)
    (prometheus,) = by_port["metrics"]["from"]
    assert prometheus["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"
    assert "namespaceSelector" in prometheus
    # /metrics listens on every interface only because this policy covers its port.
    if _config()["LEDGER_METRICS_LISTEN"].startswith("0.0.0.0:"):
        assert "metrics" in by_port


def test_disruption_budget_and_autoscaler_keep_two_servers() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = _one("PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"].get("maxUnavailable", 0) == 1 or pdb["spec"].get("minAvailable", 0) >= 1
    hpa = _one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        _one("Deployment")["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]


def test_service_monitor_scrapes_the_metrics_port_of_the_server_service() -> None:
    """Hand-written checks: kubernetes-validate has no schema for this CRD."""
    monitor = _one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {
        "jobLabel",
        "selector",
        "endpoints",
        "namespaceSelector",
        "targetLabels",
        "podTargetLabels",
    }
    selected = [
        s
        for s in _all()
        if s["kind"] == "Service"
        and _selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert len(selected) == 1, "exactly one Service: each pod scraped once"
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert spec["endpoints"]
    endpoint_fields = {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= endpoint_fields, set(endpoint) - endpoint_fields
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert endpoint.get("scheme", "http") in {"http", "https"}
        assert "jobLabel" not in spec or spec["jobLabel"] in selected[0]["metadata"]["labels"]


def test_service_monitor_job_label_is_the_one_the_alert_rules_select() -> None:
    """Rules and dashboard select job="creditledger" (deploy/prometheus/prometheus.yml)."""
    prometheus = yaml_documents(K8S.parent / "prometheus" / "prometheus.yml")[0]
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    monitor = _one("ServiceMonitor")["spec"]
    service = next(
        s
        for s in _all()
        if s["kind"] == "Service"
        and _selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])
    )
    # The Operator names the job after the Service's jobLabel value, else the Service name.
    job = service["metadata"]["labels"].get(
        monitor.get("jobLabel", ""), service["metadata"]["name"]
    )
    assert job in jobs


def test_prometheus_rule_carries_exactly_the_rules_of_deploy_prometheus() -> None:
    """Hand-written checks for the CRD; the content must be the rule files', unchanged."""
    rule = _one("PrometheusRule")
    assert rule == prometheus_rule.rule_object(), (
        "deploy/k8s/prometheusrule.yaml is stale: run `python -m tests.deploy.prometheus_rule --write`"
    )
    assert set(rule["spec"]) == {"groups"}
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names are unique"
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item), item
            assert isinstance(item["expr"], str) and item["expr"].strip()


def test_example_caller_file_is_accepted_by_the_server(tmp_path: Path) -> None:
    from ledger.security.callers import load

    examples = {d["metadata"]["name"]: d for d in yaml_documents(K8S / "secrets.example.yaml")}
    name = _config()["LEDGER_CALLERS_FILE"].rsplit("/", 1)[1]
    path = tmp_path / name
    path.write_text(examples["creditledger-callers"]["stringData"][name])
    load(path)  # raises CallerFileError on anything the server would refuse at start
