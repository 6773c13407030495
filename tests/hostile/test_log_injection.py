"""A caller's control characters never forge a log line, in either log format (issue 13, item 9).

An invalid account id is logged as the caller sent it (the request line names
the account): with a raw `\\n` in it, the text format printed a second line of
the caller's choosing.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from creditledger.v1 import ledger_pb2

from tests.faults.calls import sync_stub
from tests.torture.rpc import call_sync
from tests.torture.server import LedgerServer

pytestmark = pytest.mark.timeout(120)

FORGED = "12:00:00.000 Charge               OK                           0.10 ms victim"
HOSTILE_IDS = [
    f"x\n{FORGED}",
    f"x\r\n{FORGED}",
    f"x\r{FORGED}",
    f"x\u2028{FORGED}",
    f"x\x85{FORGED}",
    "x\x1b[2K\x1b[1Gerased",  # a terminal escape that would erase the line shown
    "x\u202eeulav",  # a bidi override that would reverse what follows
    "x\x00nul",
]


def attack(log_format: str, database_url: str, tmp_path: Path) -> str:
    """Send every hostile id to a server logging in `log_format`; return its log."""
    log = tmp_path / f"server-{log_format}.log"
    server = LedgerServer(database_url, log, extra_args=["--log-format", log_format])
    server.start()
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    try:
        with sync_stub(server.target) as stub:
            for account_id in HOSTILE_IDS:
                request = ledger_pb2.GetAccountRequest(account_id=account_id)
                assert call_sync(stub.GetAccount, request, 10).code.name == "INVALID_ARGUMENT"
            call_sync(stub.GetAccount, ledger_pb2.GetAccountRequest(account_id=marker), 10)
        deadline = time.monotonic() + 10  # the last request line is written after the reply
        while marker not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    return log.read_text(encoding="utf-8", errors="strict")


def request_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if "GetAccount" in line]


def test_text_format_escapes_every_control_character(
    fresh_database_url: str, tmp_path: Path
) -> None:
    text = attack("text", fresh_database_url, tmp_path)
    lines = request_lines(text)
    assert len(lines) == len(HOSTILE_IDS) + 1, "\n".join(lines)
    # No line of the log starts with what the caller wrote after its newline.
    assert not [line for line in text.splitlines() if line.startswith(FORGED)]
    for line in lines:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), repr(line)
        assert "\u2028" not in line and "\u202e" not in line, repr(line)
    assert any(f"x\\n{FORGED}" in line for line in lines), lines
    assert any("x\\u202eeulav" in line for line in lines), lines


def test_json_format_keeps_one_object_per_line(fresh_database_url: str, tmp_path: Path) -> None:
    text = attack("json", fresh_database_url, tmp_path)
    logged = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)  # every line is a whole JSON object
            if record.get("method") == "GetAccount":
                logged.append(record["account_id"])
        else:
            assert not line.startswith(FORGED), line
    assert logged[: len(HOSTILE_IDS)] == HOSTILE_IDS  # kept exactly, escaped only in JSON
