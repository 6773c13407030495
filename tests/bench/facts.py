"""Facts recorded with every run: the commit and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _git(repo: Path, *args: str) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def git_facts(repo: Path) -> dict[str, Any]:
    """Commit, its subject, and whether the tree had uncommitted changes."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git(repo, "rev-parse", "HEAD"),
        "subject": _git(repo, "log", "-1", "--format=%s"),
        "dirty": bool(status) if status is not None else None,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _mem_total_mb() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_pressure() -> str | None:
    """The kernel's CPU pressure line (`some avg10=.. avg60=..`): how contended the
    cores were, which load average alone does not say on a shared machine."""
    try:
        with open("/proc/pressure/cpu") as f:
            return f.readline().strip()
    except OSError:
        return None


def machine_facts() -> dict[str, Any]:
    """CPU, memory, load, OS, Python and the versions of the libraries on the path."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "loadavg_start": os.getloadavg(),
        "cpu_pressure_start": cpu_pressure(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": {d: _version(d) for d in ("grpcio", "protobuf", "uvloop", "asyncpg")},
    }
