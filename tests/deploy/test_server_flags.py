"""The deploy files only use flags and environment variables that `ledger serve` knows.

A typo in a ConfigMap key or a flag removed from the server would otherwise
show up only when a pod starts (or, for an env var, never: it is ignored).
"""

from __future__ import annotations

import pytest

from tests.deploy.files import (
    COMPOSE,
    K8S,
    dockerfile_instructions,
    env_names_read_by_the_server,
    exec_form,
    final_stage,
    last,
    yaml_documents,
)

pytestmark = pytest.mark.timeout(60)


def _check_serve_argv(argv: list[str]) -> None:
    """argparse exits on an unknown flag."""
    from ledger.cli import build_parser

    assert argv[0] == "serve"
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`ledger {' '.join(argv)}` is refused (exit {exc.code})")


def test_image_command_is_accepted_by_ledger_serve() -> None:
    _check_serve_argv(exec_form(last(final_stage(dockerfile_instructions()), "CMD").args))


def test_kubernetes_args_are_accepted_by_ledger_serve() -> None:
    deployment = yaml_documents(K8S / "deployment.yaml")[0]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    _check_serve_argv(container["args"])


def test_every_ledger_env_var_set_by_deploy_is_read_by_the_server() -> None:
    read = env_names_read_by_the_server()
    config = yaml_documents(K8S / "configmap.yaml")[0]["data"]
    compose = yaml_documents(COMPOSE)[0]["services"]
    compose_env = {
        name
        for service in compose.values()
        if isinstance(service.get("environment"), dict)
        for name in service["environment"]
    }
    set_by_deploy = {
        n for n in set(config) | compose_env | {"LEDGER_DATABASE_URL"} if n.startswith("LEDGER_")
    }
    unknown = sorted(set_by_deploy - read)
    assert not unknown, f"set by deploy/ but read by no code in ledger/: {unknown}"
