"""Every command of the README's grpcurl session, run as written against a live server."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import RunningServer
from tests.grpcurl.session import commands, script, session_source, split_output
from tests.grpcurl.tool import grpcurl_path, run_process


def test_session_parses_into_the_commands_a_reader_pastes() -> None:
    block = "# comment\ngrpcurl a \\\n  b\n\nRES=$(x \\\n  | y)\necho $RES\n"
    assert commands(block) == ["grpcurl a   b", "RES=$(x   | y)", "echo $RES"]


async def test_readme_grpcurl_session_runs(ledger_server: RunningServer) -> None:
    path, block = session_source()
    cmds = commands(block)
    assert len(cmds) >= 10, f"{path}: expected the whole session, got {cmds}"
    # The reader's PATH has grpcurl and python3 from the venv (`make install`).
    tools = f"{Path(grpcurl_path()).parent}:{Path(sys.executable).parent}"
    done = await run_process(
        "bash", "-c", script(cmds, ledger_server.target), env={"PATH": f"{tools}:/usr/bin:/bin"}
    )
    results = split_output(done.stdout, len(cmds))
    for cmd, (status, output) in zip(cmds, results, strict=True):
        assert status == 0, f"{path}: `{cmd}` exited {status}:\n{output}"

    def output_of(fragment: str) -> str:
        """Output of the last command containing `fragment`."""
        return [out for cmd, (_, out) in zip(cmds, results, strict=True) if fragment in cmd][-1]

    assert "creditledger.v1.LedgerService" in output_of(" list")
    assert "message ReserveRequest" in output_of("describe")
    echoed = output_of('echo "reservation')
    assert echoed.startswith("reservation: ") and len(echoed.split()[-1]) > 8, echoed
    streamed = output_of("/WatchTransactions")
    assert '"position": "' in streamed and '"idempotency_key": "readme-grant-1"' in streamed, (
        streamed
    )
    assert '"movement": "MOVEMENT_REFUND"' in streamed, streamed
    # The Reserve of all 3000 ran the customer out; the Refund of 1000 recovered it.
    for kind in ("KIND_BALANCE_BELOW", "KIND_BALANCE_EXHAUSTED", "KIND_BALANCE_RECOVERED"):
        assert kind in streamed, streamed
    assert '"state": "STATE_ABOVE"' in output_of("/SetBalanceAlert")
    scheduled = output_of("/CreateGrantSchedule")
    assert '"available": "1000"' in scheduled and '"cap_percent": 50' in scheduled, scheduled
    held = output_of("/ListReservations")
    assert '"state": "STATE_OPEN"' in held and '"amount": "3000"' in held, held
    assert '"settled": "0"' in held, held  # -emit-defaults: the zero is shown
    assert '"state": "STATE_CLOSED"' in output_of("/Settle")
    assert "idempotent-replayed: true" in output_of("-v -d")
    balance = output_of("/GetBalance")
    for field, value in (("available", 1000), ("granted", 3000), ("settled", 3000)):
        assert f'"{field}": "{value}"' in balance, balance
    assert '"refunded": "1000"' in balance, balance  # once, though the refund ran twice
    # -emit-defaults: zero fields are shown, not dropped as proto3 JSON would.
    assert '"reserved": "0"' in balance, balance
    assert '"remaining": "0"' in output_of("/Settle")
    refused = output_of("/Charge")
    assert "INSUFFICIENT_CREDITS" in refused and "FailedPrecondition" in refused, refused
    assert "as expected" in refused
    # The pool with a capped member.
    assert '"funded_by": "tenant-42:acme"' in output_of('"tenant-42:acme:bob", "asset": "sms"}')
    pooled = output_of('"tenant-42:acme:bob", "asset": "sms"}')
    assert '"may_spend": "20"' in pooled and '"used": "80"' in pooled, pooled
    capped = output_of("readme-bob-2")
    assert "CAP_EXCEEDED" in capped and "as expected" in capped, capped
    assert '"member_id": "tenant-42:acme:bob"' in output_of("readme-bob-1")
    batch = output_of("/SubmitBatch")
    assert batch.count('"charge"') == 2 and "INSUFFICIENT_CREDITS" in batch, batch
    assert '"settled": "1"' in batch and '"code": 9' in batch, batch
