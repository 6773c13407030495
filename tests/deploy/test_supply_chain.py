"""Issue 15, item 6: locked, hashed dependencies, and a local client no index can stand in for.

Static checks (no network): the lock inputs are what the two pyproject.toml
say (`make lock` regenerates them), every locked requirement is pinned with
hashes, and the server's requirement on creditledger-client can only be met
by this repository's clients/python. The Dockerfile's use of the lock is
checked in test_dockerfile.py.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy.files import REPO

pytestmark = pytest.mark.timeout(60)
REQUIREMENTS = REPO / "requirements"


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_lock", REPO / "deploy" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and ln[0] != "#"]


def _locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) of a pip-compile --generate-hashes file."""
    text = path.read_text().replace("\\\n", " ")
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)(?:\s*;[^-]*)?", line)
        assert m, f"{path.name}: not pinned: {line[:80]}"
        out[m[1].lower().replace("_", "-")] = (
            m[2],
            re.findall(r"--hash=sha256:([0-9a-f]{64})", line),
        )
    return out


def test_the_lock_inputs_are_what_the_pyprojects_say() -> None:
    for name, lines in _lock_module().inputs().items():
        assert _lines(REQUIREMENTS / name) == lines, f"requirements/{name} is stale: make lock"


@pytest.mark.parametrize("name", ["server", "dev"])
def test_every_locked_requirement_is_pinned_with_hashes(name: str) -> None:
    locked = _locked(REQUIREMENTS / f"{name}.lock")
    for package, (version, hashes) in locked.items():
        assert hashes, f"{name}.lock: {package}=={version} has no hash"
    for requirement in map(Requirement, _lines(REQUIREMENTS / f"{name}.in")):
        key = requirement.name.lower().replace("_", "-")
        assert key in locked, f"{name}.lock lacks {requirement.name}: make lock"
        assert requirement.specifier.contains(locked[key][0], prereleases=True), (
            f"{name}.lock pins {key}=={locked[key][0]}, outside {requirement.specifier}: make lock"
        )
    assert "creditledger-client" not in locked, "the local client is never locked from an index"


def test_the_local_client_cannot_be_satisfied_from_a_public_index() -> None:
    server = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())["project"]
    (requirement,) = [
        Requirement(r) for r in server["dependencies"] if r.startswith("creditledger-client")
    ]
    local = Version(client["version"])
    assert local.local, "the client's version carries a local label (PyPI refuses those)"
    assert requirement.specifier.contains(local)
    # Whatever a squatter uploads to PyPI has no local label: none of it satisfies.
    for public in ("0.1.0", "0.1.1", "1.0.0", "99.0", str(local.public)):
        assert not requirement.specifier.contains(public), public
