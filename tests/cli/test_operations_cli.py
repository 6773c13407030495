"""What an operator reaches for: flags anywhere, defaults and exit codes in --help, open
reservations, migration status, verify scoped to an account and pushed on a schedule.

Each runs the real `python -m ledger` as a subprocess.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1.ledger_pb2_grpc import LedgerServiceStub

from ledger.app import App
from ledger.config import Config
from tests.cli.run import ledger, parsed
from tests.conftest import RunningServer, key
from tests.support import db as support_db
from tests.support.process import free_port

pytestmark = pytest.mark.timeout(120)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- flags, help, exit codes ----------------------------------------------------------


async def test_connection_flags_work_before_and_after_the_command(
    ledger_server: RunningServer,
) -> None:
    t, account = ledger_server.target, new_id("ops")
    assert (await ledger("--target", t, "account", "create", account)).returncode == 0
    before = await ledger("--target", t, "--json", "balance", account)
    assert before.returncode == 0, before.stderr
    after = await ledger("balance", account, "--target", t, "--json")
    assert parsed(before) == parsed(after)
    # After the command wins: a dead address before, the live one after.
    dead = f"127.0.0.1:{free_port()}"
    both = await ledger("--target", dead, "balance", account, "--target", t)
    assert both.returncode == 0, both.stderr


async def test_exit_codes_0_1_2_3(ledger_server: RunningServer) -> None:
    t, account = ledger_server.target, new_id("ops")
    assert (await ledger("account", "create", account, "--target", t)).returncode == 0
    refused = await ledger("account", "show", new_id("nobody"), "--target", t)
    assert refused.returncode == 1, refused.stderr
    assert "request id: " in refused.stderr  # what to quote when asking about the call
    bad_flag = await ledger("balance", account, "--target", t, "--no-such-flag")
    assert bad_flag.returncode == 2
    invalid = await ledger("reservations", account, "--page-size", "5000", "--target", t)
    assert invalid.returncode == 2, invalid.stderr  # INVALID_ARGUMENT from the server
    dead = await ledger("--target", f"127.0.0.1:{free_port()}", "--timeout", "2", "balance", "x")
    assert dead.returncode == 3, dead.stderr


async def test_help_shows_defaults_exit_codes_and_no_secret() -> None:
    env = {"LEDGER_TOKEN": "s3cret-token", "LEDGER_DATABASE_URL": "postgresql://u:pw-xyz@h/db"}
    top = await ledger("--help", env=env)
    assert top.returncode == 0
    words = " ".join(top.stdout.split())  # argparse wraps lines
    assert "(default: 127.0.0.1:50051)" in words
    assert "exit codes" in words and "4 verify passed" in words
    command = await ledger("balance", "--help", env=env)
    words = " ".join(command.stdout.split())
    assert "(default 127.0.0.1:50051)" in words and "exit codes" in words
    serve = await ledger("serve", "--help", env=env)
    assert "(default: 127.0.0.1:50051)" in " ".join(serve.stdout.split())  # --listen
    for out in (top.stdout, command.stdout, serve.stdout):
        assert "s3cret-token" not in out and "pw-xyz" not in out


# --- reservations -----------------------------------------------------------------------


async def test_reservations_lists_the_open_holds_of_an_account(
    ledger_server: RunningServer,
) -> None:
    t, account = ledger_server.target, new_id("ops")
    assert (await ledger("account", "create", account, "--target", t)).returncode == 0
    parsed(await ledger("grant", account, "sms", "100", "--json", "--target", t))
    held = [
        parsed(await ledger("reserve", account, "sms", "10", "--json", "--target", t))
        for _ in range(3)
    ]
    ids = [h["reservation"]["reservation_id"] for h in held]
    parsed(await ledger("settle", ids[0], "10", "--final", "--json", "--target", t))

    text = await ledger("reservations", account, "--target", t)
    assert text.returncode == 0, text.stderr
    assert ids[0] not in text.stdout and ids[1] in text.stdout and ids[2] in text.stdout
    paged = await ledger("reservations", account, "--page-size", "1", "--target", t)
    assert "more: add --page-token" in paged.stdout
    every = parsed(
        await ledger("reservations", account, "--state", "all", "--all", "--json", "--target", t)
    )
    assert [r["reservation_id"] for r in every["reservations"]] == ids  # oldest first
    closed = parsed(
        await ledger("reservations", account, "--state", "closed", "--json", "--target", t)
    )
    assert [r["reservation_id"] for r in closed["reservations"]] == [ids[0]]


# --- a database of its own: migrations and verify ----------------------------------------


@pytest.fixture
async def scratch() -> AsyncIterator[support_db.TestDatabase]:
    db = await support_db.TestDatabase.create("ledger_cli")
    yield db
    await db.drop()


async def _seed(url: str) -> None:
    """Two accounts with grants, holds and a settle, made through the real server."""
    app = App(Config(listen="127.0.0.1:0", database_url=url, metrics_listen="", drain_s=0.5))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = LedgerServiceStub(ch)
            for account in ("victim", "bystander"):
                await stub.CreateAccount(pb.CreateAccountRequest(account_id=account))
                await stub.Grant(
                    pb.GrantRequest(
                        account_id=account, asset="crm", amount=100, idempotency_key=key()
                    )
                )
                r = await stub.Reserve(
                    pb.ReserveRequest(
                        account_id=account, asset="crm", amount=40, idempotency_key=key()
                    )
                )
                await stub.Settle(
                    pb.SettleRequest(
                        reservation_id=r.reservation.reservation_id,
                        amount=10,
                        idempotency_key=key(),
                    )
                )
    finally:
        await app.stop()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_migrations_lists_pending_then_applied(scratch: support_db.TestDatabase) -> None:
    pending = await ledger("migrations", "--database-url", scratch.url, "--json")
    assert pending.returncode == 1, pending.stderr  # nothing applied on a new database
    listing = parsed_any(pending.stdout)
    assert listing["pending"] and listing["pending"][0] == "0001_init.sql"
    assert (await ledger("migrate", "--database-url", scratch.url)).returncode == 0
    done = await ledger("migrations", "--database-url", scratch.url)
    assert done.returncode == 0, done.stderr
    assert "0 pending" in done.stdout and "0001_init.sql" in done.stdout
    unreachable = await ledger(
        "migrations", "--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    )
    assert unreachable.returncode == 3, unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def parsed_any(stdout: str) -> dict[str, list[str]]:
    import json

    value: dict[str, list[str]] = json.loads(stdout)
    return value


async def test_verify_scoped_to_an_account(scratch: support_db.TestDatabase) -> None:
    await _seed(scratch.url)
    assert (await ledger("verify", "--database-url", scratch.url)).returncode == 0
    await _execute(
        scratch.url, "UPDATE balances SET available = available + 1 WHERE account_id = 'victim'"
    )
    whole = await ledger("verify", "--database-url", scratch.url)
    assert whole.returncode == 1
    victim = await ledger("verify", "--database-url", scratch.url, "--account", "victim", "--json")
    assert victim.returncode == 1
    assert "balances_match_entries" in parsed_any(victim.stdout)["violations"]
    bystander = await ledger("verify", "--database-url", scratch.url, "--account", "bystander")
    assert bystander.returncode == 0, bystander.stdout + bystander.stderr
    assert "(account bystander): every invariant holds" in bystander.stdout
    nobody = await ledger("verify", "--database-url", scratch.url, "--account", "nobody")
    assert nobody.returncode == 1 and "no account nobody" in nobody.stderr
    unreachable = await ledger(
        "verify", "--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    )
    assert unreachable.returncode == 3 and "Traceback" not in unreachable.stderr


# --- verify --pushgateway --------------------------------------------------------------


@dataclass
class Pushgateway:
    """Records what is pushed to it, as a Pushgateway would receive it."""

    url: str
    pushes: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, body)


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    gateway = Pushgateway("")

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            gateway.pushes.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        do_POST = do_PUT = _record

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    gateway.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield gateway
    server.shutdown()
    server.server_close()


def _samples(body: str) -> dict[str, float]:
    return {
        line.split()[0]: float(line.split()[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


async def test_verify_pushes_its_result_and_a_failure_keeps_the_last_success(
    scratch: support_db.TestDatabase, pushgateway: Pushgateway
) -> None:
    await _seed(scratch.url)
    ok = await ledger("verify", "--database-url", scratch.url, "--pushgateway", pushgateway.url)
    assert ok.returncode == 0, ok.stderr
    ((method, path, body),) = pushgateway.pushes
    # POST (pushadd): replaces only the pushed metrics of the group.
    assert (method, path) == ("POST", "/metrics/job/creditledger-verify")
    samples = _samples(body)
    assert samples["ledger_verify_ok"] == 1 and samples["ledger_verify_violations"] == 0
    assert samples["ledger_verify_last_success_timestamp_seconds"] > 0
    assert samples["ledger_verify_last_run_timestamp_seconds"] > 0

    await _execute(scratch.url, "UPDATE lots SET remaining = remaining - 1")
    failed = await ledger("verify", "--database-url", scratch.url, "--pushgateway", pushgateway.url)
    assert failed.returncode == 1
    method, path, body = pushgateway.pushes[-1]
    samples = _samples(body)
    assert method == "POST" and samples["ledger_verify_ok"] == 0
    assert samples["ledger_verify_violations"] >= 1
    assert "ledger_verify_last_success_timestamp_seconds" not in samples


async def test_verify_exits_4_when_the_result_cannot_be_pushed(
    scratch: support_db.TestDatabase,
) -> None:
    await _seed(scratch.url)
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = await ledger("verify", "--database-url", scratch.url, "--pushgateway", nowhere)
    assert result.returncode == 4, result.stderr
    assert "could not push" in result.stderr
    both = await ledger(
        "verify", "--database-url", scratch.url, "--account", "victim", "--pushgateway", nowhere
    )
    assert both.returncode == 2  # a scoped run never stands for the whole proof
