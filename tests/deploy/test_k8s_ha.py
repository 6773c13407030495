"""deploy/k8s-ha: the ledger on a CloudNativePG cluster with synchronous replicas.

No schema of CloudNativePG's `Cluster` ships with kubernetes-validate, so the
Cluster is checked structurally here (the fields that make failover safe); the
overlay's patches are applied by hand (a strategic merge of `env` by name, as
kustomize does) and the patched Deployment and Job are validated offline
against the Kubernetes schemas, like deploy/k8s.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.files import DEPLOY, K8S, yaml_documents

kv_utils = pytest.importorskip(
    "kubernetes_validate.utils", reason="kubernetes-validate not installed (part of the dev extras)"
)

pytestmark = pytest.mark.timeout(60)
HA = DEPLOY / "k8s-ha"


def _one(path: Path) -> dict[str, Any]:
    docs = yaml_documents(path)
    assert len(docs) == 1, path
    return docs[0]


def _kustomization() -> dict[str, Any]:
    return _one(HA / "kustomization.yaml")


def _cluster() -> dict[str, Any]:
    return _one(HA / "cnpg-cluster.yaml")


def _patched(kind: str) -> dict[str, Any]:
    """The base manifest of `kind` with the overlay's patch merged in."""
    patches = [p for p in _kustomization()["patches"] if p["target"]["kind"] == kind]
    assert len(patches) == 1, kind
    patch = _one(HA / patches[0]["path"])
    assert patch["metadata"]["name"] == patches[0]["target"]["name"]
    base = [
        d
        for name in yaml_documents(K8S / "kustomization.yaml")[0]["resources"]
        for d in yaml_documents(K8S / name)
        if d["kind"] == kind and d["metadata"]["name"] == patch["metadata"]["name"]
    ]
    assert len(base) == 1, f"the patch of {kind} targets nothing in deploy/k8s"
    doc = copy.deepcopy(base[0])
    containers = {c["name"]: c for c in doc["spec"]["template"]["spec"]["containers"]}
    for pc in patch["spec"]["template"]["spec"]["containers"]:
        assert pc["name"] in containers, f"patch names container {pc['name']} not in the base"
        env = {e["name"]: e for e in containers[pc["name"]].get("env", [])}
        for e in pc["env"]:
            env[e["name"]] = e
        containers[pc["name"]]["env"] = list(env.values())
    return doc


def _env(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    container = doc["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def test_overlay_builds_on_the_base_and_holds_no_secret() -> None:
    k = _kustomization()
    assert k["kind"] == "Kustomization"
    assert "../k8s" in k["resources"] and "cnpg-cluster.yaml" in k["resources"]
    on_disk = {p.name for p in HA.glob("*.yaml")} - {"kustomization.yaml"}
    used = {r for r in k["resources"] if not r.startswith("..")} | {p["path"] for p in k["patches"]}
    assert used == on_disk
    for path in HA.glob("*.yaml"):
        assert all(d.get("kind") != "Secret" for d in yaml_documents(path)), path


def test_cluster_replicates_synchronously_and_fails_over_at_once() -> None:
    c = _cluster()
    assert c["apiVersion"] == "postgresql.cnpg.io/v1" and c["kind"] == "Cluster"
    spec = c["spec"]
    assert spec["instances"] >= 3
    sync = spec["postgresql"]["synchronous"]
    assert sync["method"] in ("any", "first") and 1 <= sync["number"] < spec["instances"]
    # Never degrade to asynchronous commits: an acknowledged write is on a standby.
    assert sync["dataDurability"] == "required"
    # The ledger's read endpoint is used only with remote_apply (ledger/storage/pool.py).
    assert spec["postgresql"]["parameters"]["synchronous_commit"] == "remote_apply"
    assert spec.get("failoverDelay", 0) == 0
    assert spec["primaryUpdateMethod"] == "switchover"
    affinity = spec["affinity"]
    assert affinity["enablePodAntiAffinity"] is True
    assert affinity["podAntiAffinityType"] == "required"
    assert ":15" in spec["imageName"], "PostgreSQL 15 is the version make failover tests"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_ledger_uses_the_operators_secret_for_the_rw_service(kind: str) -> None:
    doc = _patched(kind)
    ref = _env(doc)["LEDGER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    # CloudNativePG's application Secret: <cluster>-app, whose `uri` names <cluster>-rw.
    assert ref == {"name": f"{_cluster()['metadata']['name']}-app", "key": "uri"}


def test_reads_go_to_the_ro_service_of_the_same_database() -> None:
    env = _env(_patched("Deployment"))
    cluster = _cluster()
    url = urlsplit(env["LEDGER_READ_DATABASE_URL"]["value"])
    assert url.hostname == f"{cluster['metadata']['name']}-ro"
    assert url.password is None, "the password comes from PGPASSWORD, never a manifest"
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    assert url.path == f"/{initdb['database']}" and url.username == initdb["owner"]
    assert (
        env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
        == f"{cluster['metadata']['name']}-app"
    )


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_patched_manifests_are_valid_against_the_kubernetes_schemas(kind: str) -> None:
    doc = _patched(kind)
    try:
        kv_utils.validate(doc, kv_utils.latest_version(), strict=True)
    except kv_utils.ValidationError as exc:
        pytest.fail(f"{kind}: {'.'.join(str(p) for p in exc.path)}: {exc.message}")
