"""deploy/compose.yaml: parses, refers to files that exist, and its ports and names agree.

No Docker engine runs where `make test` runs, so the stack is not started here.
What can be checked without one is: the structure, every file the stack
bind-mounts or builds from, the start order, and that the ledger's ports match
its command flags, the published ports and Prometheus's scrape target. When a
Docker Compose v2 CLI is on PATH, `docker compose config` validates it too.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.deploy.files import (
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    dockerfile_instructions,
    exec_form,
    final_stage,
    flag_value,
    last,
    port_of,
    yaml_documents,
)

pytestmark = pytest.mark.timeout(60)

STACK: dict[str, Any] = yaml_documents(COMPOSE)[0]
SERVICES: dict[str, dict[str, Any]] = STACK["services"]


def _mounts(service: str) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service, short or long syntax."""
    out = []
    for volume in SERVICES[service].get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        out.append((source, target))
    return out


def _is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _bind_mounts(service: str) -> list[tuple[Path, str]]:
    return [(DEPLOY / s, t) for s, t in _mounts(service) if _is_bind(s)]


def _host_path(service: str, container_path: str) -> Path:
    """The repository file a container path of a service comes from through a bind mount."""
    for source, target in sorted(_bind_mounts(service), key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise LookupError(f"{service}: nothing mounted at {container_path}")


def _ledger_command() -> list[str]:
    """The ledger service's effective argv after the entrypoint."""
    command = SERVICES["ledger"].get("command")
    if command is None:
        command = last(final_stage(dockerfile_instructions()), "CMD").args
    return exec_form(command) if isinstance(command, str) else list(command)


def _published_container_ports(service: str) -> set[int]:
    ports = set()
    for port in SERVICES[service].get("ports", []):
        if isinstance(port, str):
            ports.add(int(port.rsplit(":", 1)[1].split("/")[0]))
        else:
            ports.add(int(port["target"]))
    return ports


def _prometheus_config() -> dict[str, Any]:
    return yaml_documents(_host_path("prometheus", "/etc/prometheus/prometheus.yml"))[0]


def _argv(command: str | list[str]) -> list[str]:
    return exec_form(command) if isinstance(command, str) else command


def _depends_on(service: str) -> dict[str, str]:
    deps = SERVICES[service].get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_the_stack_has_the_nine_services() -> None:
    assert set(SERVICES) == {
        "postgres", "certs", "migrate", "maintain", "ledger", "verify", "pushgateway",
        "prometheus", "grafana",
    }  # fmt: skip


def test_verify_runs_on_a_schedule_and_pushes_where_prometheus_scrapes() -> None:
    verify = SERVICES["verify"]
    script = " ".join(_argv(verify["command"]))
    assert "ledger verify --pushgateway http://pushgateway:9091" in script
    assert "sleep 3600" in script, "hourly: LedgerVerifyStale allows a day without success"
    assert _depends_on("verify")["migrate"] == "service_completed_successfully"
    jobs = {j["job_name"]: j for j in _prometheus_config()["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True, "keeps job=creditledger-verify"
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway:9091"]


def test_every_service_has_an_image_or_a_build_whose_dockerfile_exists() -> None:
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build is None:
            assert ":" in service["image"], f"{name}: pin the image tag"
            assert not service["image"].endswith(":latest"), f"{name}: pin the image tag"
            continue
        context = DEPLOY / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = context / (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert dockerfile.resolve() == DOCKERFILE.resolve(), f"{name}: builds {dockerfile}"


def test_every_bind_mounted_path_exists_in_the_repository() -> None:
    for name in SERVICES:
        for source, target in _bind_mounts(name):
            assert source.exists(), f"{name}: {source.relative_to(DEPLOY.parent)} -> {target}"
    named = {s for n in SERVICES for s, _ in _mounts(n) if not _is_bind(s)}
    assert named <= set(STACK.get("volumes") or {}), "named volumes are declared"


def test_start_order_postgres_then_migrate_then_ledger() -> None:
    assert "healthcheck" in SERVICES["postgres"]
    assert _depends_on("migrate") == {"postgres": "service_healthy"}
    assert _depends_on("ledger")["migrate"] == "service_completed_successfully"
    assert _depends_on("ledger")["certs"] == "service_completed_successfully"
    assert SERVICES["certs"].get("restart", "no") == "no", "one-shot"
    assert _argv(SERVICES["migrate"]["command"]) == ["migrate"]
    assert SERVICES["migrate"].get("restart", "no") == "no", "one-shot"


def _env(service: str) -> dict[str, str]:
    env: dict[str, str] = SERVICES[service]["environment"]
    return env


def test_ledger_and_migrate_reach_the_compose_database_as_two_roles() -> None:
    """migrate logs in as the owner, the server as the serving role; neither is the
    superuser, and the server never holds the owner's password (issue 15)."""
    pg = _env("postgres")
    owner = urlparse(_env("migrate")["LEDGER_DATABASE_URL"])
    serving = urlparse(_env("ledger")["LEDGER_DATABASE_URL"])
    for url in (owner, serving):
        assert url.hostname == "postgres"
        assert (url.port or 5432) == 5432
        assert url.path.lstrip("/") == pg["POSTGRES_DB"]
        assert url.username != pg["POSTGRES_USER"], "never the superuser"
    assert owner.username != serving.username
    assert serving.username == _env("migrate")["LEDGER_SERVING_ROLE"]
    assert serving.password == _env("migrate")["LEDGER_SERVING_ROLE_PASSWORD"]
    assert owner.password == pg["CREDITLEDGER_OWNER_PASSWORD"]
    assert owner.password != serving.password
    init = _host_path("postgres", "/docker-entrypoint-initdb.d/10-creditledger-owner.sh")
    text = init.read_text()
    assert f"CREATE ROLE {owner.username} LOGIN NOSUPERUSER" in text


def test_ledger_serves_mutual_tls_with_the_generated_caller_file() -> None:
    """Safe by default: TLS, a client CA and a caller file, all from the certs volume."""
    env = _env("ledger")
    argv = _ledger_command()
    assert "--insecure" not in argv and "--allow-anonymous-full-access" not in argv
    assert "LEDGER_INSECURE" not in env and "LEDGER_ALLOW_ANONYMOUS_FULL_ACCESS" not in env
    mounts = dict((t, s) for s, t in _mounts("ledger"))
    certs_volume = mounts["/certs"]
    assert dict((t, s) for s, t in _mounts("certs"))["/certs"] == certs_volume
    for key in ("LEDGER_TLS_CERT", "LEDGER_TLS_KEY", "LEDGER_TLS_CLIENT_CA", "LEDGER_CALLERS_FILE"):
        assert env[key].startswith("/certs/"), key
    script = _host_path("certs", "/make-dev-certs.sh").read_text()
    for key in ("LEDGER_TLS_CERT", "LEDGER_TLS_KEY", "LEDGER_TLS_CLIENT_CA", "LEDGER_CALLERS_FILE"):
        assert f'"$out/{env[key].rsplit("/", 1)[1]}"' in script, key


def test_the_generated_caller_file_is_accepted_by_the_server(tmp_path: Path) -> None:
    from ledger.security.callers import load

    script = _host_path("certs", "/make-dev-certs.sh").read_text()
    toml = script.split("<<'TOML'\n", 1)[1].split("\nTOML\n", 1)[0]
    path = tmp_path / "callers.toml"
    path.write_text(toml)
    (caller,) = load(path).callers
    assert caller.cert_identities == ("uri:spiffe://creditledger.local/dev-client",)
    assert "--san spiffe://creditledger.local/dev-client" in script


def test_ledger_ports_match_its_flags_the_published_ports_and_the_scrape_target() -> None:
    argv = _ledger_command()
    assert argv[0] == "serve"
    listen = flag_value(argv, "--listen")
    metrics = flag_value(argv, "--metrics-listen") or _env("ledger").get("LEDGER_METRICS_LISTEN")
    assert listen is not None and metrics is not None
    assert listen.startswith("0.0.0.0:") and metrics.startswith("0.0.0.0:")
    grpc_port, metrics_port = port_of(listen), port_of(metrics)
    assert (grpc_port, metrics_port) == (50051, 9464)
    assert _published_container_ports("ledger") == {grpc_port, metrics_port}
    for port in SERVICES["ledger"]["ports"]:
        assert str(port).startswith("127.0.0.1:"), "ports stay on the host's loopback"
    targets = [
        target
        for job in _prometheus_config()["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"ledger:{metrics_port}" in targets


def test_prometheus_loads_rule_files_that_exist() -> None:
    config = _prometheus_config()
    config_dir = _host_path("prometheus", "/etc/prometheus/prometheus.yml").parent
    assert config["rule_files"]
    for pattern in config["rule_files"]:
        matches = glob.glob(str(config_dir / pattern))
        assert matches, f"rule_files entry {pattern} matches nothing in {config_dir}"
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "creditledger" in jobs, "the alert rules select job=creditledger"


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards() -> None:
    provisioning = _host_path("grafana", "/etc/grafana/provisioning")
    datasources = [
        ds
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for doc in yaml_documents(path)
        for ds in doc.get("datasources", [])
    ]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert prometheus, "a Prometheus datasource is provisioned"
    prometheus_port = 9090
    assert _published_container_ports("prometheus") == {prometheus_port}
    assert {urlparse(ds["url"]).netloc for ds in prometheus} == {f"prometheus:{prometheus_port}"}
    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for doc in yaml_documents(path)
        for provider in doc.get("providers", [])
    ]
    assert providers, "a dashboard provider is provisioned"
    for provider in providers:
        folder = _host_path("grafana", provider["options"]["path"])
        dashboards = sorted(folder.rglob("*.json"))
        assert dashboards, f"no dashboard JSON under {folder}"
        for dashboard in dashboards:
            json.loads(dashboard.read_text())


def test_docker_compose_accepts_the_file() -> None:
    """The real parser, where a Compose v2 CLI is installed (not on the CI machine)."""
    docker = shutil.which("docker")
    candidates = [[docker, "compose"]] if docker else []
    if standalone := shutil.which("docker-compose"):
        candidates.append([standalone])
    for cli in candidates:
        probe = subprocess.run(
            [*cli, "version", "--short"], capture_output=True, text=True, timeout=20, check=False
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            result = subprocess.run(
                [*cli, "-f", str(COMPOSE), "config", "--quiet"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            return
    pytest.skip("no Docker Compose v2 CLI on PATH; structure checked by the other tests")


def test_ledger_containers_are_hardened_like_the_kubernetes_pods() -> None:
    for name in ("migrate", "maintain", "ledger", "verify"):
        service = SERVICES[name]
        assert service.get("read_only") is True, f"{name}: read-only root filesystem"
        assert service.get("cap_drop") == ["ALL"], f"{name}: no capabilities"
        assert "no-new-privileges:true" in service.get("security_opt", [])


def test_maintain_runs_ledger_maintain_hourly_as_the_owner() -> None:
    """Partition maintenance is DDL: the owner's credentials, never the server's."""
    maintain = SERVICES["maintain"]
    assert _env("maintain")["LEDGER_DATABASE_URL"] == _env("migrate")["LEDGER_DATABASE_URL"]
    assert _env("maintain")["LEDGER_DATABASE_URL"] != _env("ledger")["LEDGER_DATABASE_URL"]
    assert _argv(maintain["entrypoint"]) == ["/bin/sh", "-c"]
    (script,) = _argv(maintain["command"])
    assert "ledger maintain" in script and "sleep 3600" in script and "while" in script
    assert _depends_on("maintain") == {"migrate": "service_completed_successfully"}
    assert maintain.get("restart") == "unless-stopped"
