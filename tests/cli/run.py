"""Runs the real `python -m ledger ...` as an operator would, without blocking the event loop."""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.grpcurl.tool import Result, run_process
from tests.support.process import REPO


async def ledger(*args: str, env: dict[str, str] | None = None) -> Result:
    """`python -m ledger ARGS...` from the repository root; its status and output."""
    return await run_process(sys.executable, "-m", "ledger", *args, env=env, cwd=str(REPO))


def parsed(result: Result) -> Any:
    """The --json document a successful command printed."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)
