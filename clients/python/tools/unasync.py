"""Writes creditledger_client/sync.py from creditledger_client/aio.py.

The blocking client is the asyncio client with `async`/`await` taken out, so
it is generated instead of kept by hand: one place to change a method, and
tests/client/test_unasync.py fails when sync.py was not regenerated.

    python clients/python/tools/unasync.py          # rewrite sync.py
    python clients/python/tools/unasync.py --check  # exit 1 when sync.py is stale
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "creditledger_client"

# (pattern, replacement), applied in order; each must match at least once so
# that a change in aio.py which breaks a rule is noticed instead of ignored.
RULES: list[tuple[str, str]] = [
    (
        r'"""LedgerClient: the asyncio client \(grpc.aio\)."""',
        '"""SyncLedgerClient: the blocking client (generated from aio.py by tools/unasync.py)."""',
    ),
    (r"import asyncio\n", "import time\n"),
    (r"import grpc.aio\n", ""),
    (r"AsyncIterator", "Iterator"),
    (r"async def ", "def "),
    (r"await ", ""),
    (r"async with", "with"),
    (r"async for ", "for "),
    (r"__aenter__", "__enter__"),
    (r"__aexit__", "__exit__"),
    (r"grpc\.aio\.", "grpc."),
    (r"asyncio\.sleep\(", "time.sleep("),
    (r"\baio_channel\b", "sync_channel"),
    (r"AsyncReservation", "SyncReservation"),
    (r"\bBatcher\b", "SyncBatcher"),
    (r"\bLedgerClient\b", "SyncLedgerClient"),
    (r"Asyncio client", "Blocking client"),
    (r"calls in flight are cancelled", "calls in flight fail"),
    (r"The async context manager", "The context manager"),
    (r"for entry in page\.entries:\n\s+yield entry\n", "yield from page.entries\n"),
    (
        r"for reservation in page\.reservations:\n\s+yield reservation\n",
        "yield from page.reservations\n",
    ),
    (r"for schedule in page\.schedules:\n\s+yield schedule\n", "yield from page.schedules\n"),
    # A blocking call returns (response, call) only through with_call().
    (
        r"call = method\(([^)]*)\)\n(\s+)response = call\n",
        r"response, call = method.with_call(\1)\n",
    ),
]


def unasync(source: str) -> str:
    """The sync module's text for the async module's text."""
    for pattern, replacement in RULES:
        source, count = re.subn(pattern, replacement, source)
        if count == 0:
            raise SystemExit(f"unasync: rule {pattern!r} matched nothing in aio.py")
    return _ruff_format(source)


def _ruff_format(source: str) -> str:
    """Formats like the repository does, so the output is stable under `ruff format`."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        raise SystemExit("unasync: ruff not found (pip install ruff, or use the dev venv)")
    name = str(PACKAGE / "sync.py")
    for args in (["check", "--fix-only", "--exit-zero"], ["format"]):
        done = subprocess.run(
            [ruff, *args, "--stdin-filename", name, "-"],
            input=source,
            capture_output=True,
            text=True,
            check=True,
        )
        source = done.stdout
    return source


def main(argv: list[str]) -> int:
    expected = unasync((PACKAGE / "aio.py").read_text())
    target = PACKAGE / "sync.py"
    if "--check" in argv:
        if target.read_text() != expected:
            print(
                "creditledger_client/sync.py is stale: run python clients/python/tools/unasync.py"
            )
            return 1
        return 0
    target.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
