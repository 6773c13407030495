"""`ledger serve` with its gRPC or metrics port taken: one line naming the flag and the
address, exit 2, no traceback (issue 13, item 9)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.process import REPO, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve(database_url: str, listen: str, metrics_listen: str) -> subprocess.CompletedProcess[str]:
    flags = {
        "--listen": listen,
        "--metrics-listen": metrics_listen,
        "--database-url": database_url,
        "--log-format": "text",
    }
    return subprocess.run(
        [sys.executable, "-m", "ledger", "serve", *(x for kv in flags.items() for x in kv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
    )


@pytest.mark.parametrize("flag", ["--listen", "--metrics-listen"])
def test_a_port_in_use_is_one_line_and_exit_2(
    database_url: str, taken_port: int, flag: str
) -> None:
    taken = f"127.0.0.1:{taken_port}"
    free = f"127.0.0.1:{free_port()}"
    listen, metrics = (taken, free) if flag == "--listen" else (free, taken)
    proc = serve(database_url, listen, metrics)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"ledger serve: {flag} {taken}: address already in use"], proc.stderr
    assert proc.stdout == ""


def test_a_malformed_address_is_one_line_and_exit_2(database_url: str) -> None:
    proc = serve(database_url, "127.0.0.1:not-a-port", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (
        "ledger serve: --listen 127.0.0.1:not-a-port: not HOST:PORT (such as 127.0.0.1:50051)"
    ), proc.stderr
