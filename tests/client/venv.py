"""Builds the creditledger-client wheel and a fresh virtual environment holding only it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIST = REPO / "clients" / "python"
# The client's runtime dependencies, pinned to what the dev venv has so pip can
# take them from its cache instead of resolving anew.
RUNTIME_DEPS = ("grpcio", "protobuf", "googleapis-common-protos")


def build_wheel(workdir: Path) -> Path:
    """`pip wheel` of a clean copy of clients/python (building in place would leave build/ there)."""
    src = workdir / "src"
    shutil.copytree(
        CLIENT_DIST,
        src,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__", "tools"),
    )
    dist = workdir / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(src))  # fmt: skip
    (wheel,) = dist.glob("creditledger_client-*.whl")
    return wheel


def make_client_venv(workdir: Path) -> Path:
    """A venv with the wheel and its declared dependencies; returns its python."""
    wheel = build_wheel(workdir)
    venv = workdir / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    pins = [f"{name}=={version(name)}" for name in RUNTIME_DEPS]
    # The dev venv's pip installs into the new venv; the wheel's own metadata must
    # be enough for pip to accept it (no --no-deps).
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check", str(wheel), *pins)  # fmt: skip
    return python


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
