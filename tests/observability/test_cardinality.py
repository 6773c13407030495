"""Cardinality stays bounded whatever the traffic: no per-account series, assets capped.

A live ledger (a subprocess, so its registry starts empty) serves thousands of
distinct accounts; its /metrics must have exactly the same series after 200
accounts as after 2,000, and no id or key that went over the wire may appear
in it.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger.v1 import ledger_pb2_grpc as pb_grpc

from tests.observability.ledger_process import SeriesKey, live_ledger, series
from tests.observability.traffic import ASSET, RPC_TIMEOUT_S, refused_charge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ACCOUNTS_WARMUP = 200
ACCOUNTS_TOTAL = 2_000
CONCURRENCY = 128
# Design: the first 64 distinct assets get their own series, later ones `_other`.
ASSET_LABELS_MAX = 64
OTHER_ASSET = "_other"


async def _bounded(jobs: Iterable[Callable[[], Awaitable[list[str]]]]) -> list[str]:
    """Run the jobs CONCURRENCY at a time; the ids all of them returned."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Callable[[], Awaitable[list[str]]]) -> list[str]:
        async with gate:
            return await job()

    results = await asyncio.gather(*(one(job) for job in jobs))
    return [i for ids in results for i in ids]


async def _customer(stub: pb_grpc.LedgerServiceAsyncStub, account_id: str, n: int) -> list[str]:
    """CreateAccount, Grant, Charge; every tenth a replayed Grant and a refused Charge.

    Returns the ids and keys sent and received.
    """
    grant_key, charge_key = f"{account_id}-grant", f"{account_id}-charge"
    await stub.CreateAccount(pb.CreateAccountRequest(account_id=account_id), timeout=RPC_TIMEOUT_S)
    grant = pb.GrantRequest(
        account_id=account_id, asset=ASSET, amount=100, idempotency_key=grant_key
    )
    granted = await stub.Grant(grant, timeout=RPC_TIMEOUT_S)
    charge = pb.ChargeRequest(
        account_id=account_id, asset=ASSET, amount=30, idempotency_key=charge_key
    )
    charged = await stub.Charge(charge, timeout=RPC_TIMEOUT_S)
    ids = [
        account_id,
        grant_key,
        charge_key,
        granted.lot.lot_id,
        charged.reservation.reservation_id,
    ]
    if n % 10 == 0:
        await stub.Grant(grant, timeout=RPC_TIMEOUT_S)
        await refused_charge(stub, account_id, f"{account_id}-refused")
        ids.append(f"{account_id}-refused")
    return ids


def _diff(before: set[SeriesKey], after: set[SeriesKey]) -> str:
    added, gone = sorted(after - before), sorted(before - after)
    return f"{len(added)} new series, e.g. {added[:10]}; {len(gone)} gone, e.g. {gone[:10]}"


def _leaked(text: str, ids: list[str]) -> list[str]:
    return [i for i in ids if i and i in text]


async def test_series_stay_flat_from_200_to_2000_accounts(
    database_url: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]

    def customers(numbers: range) -> list[Callable[[], Awaitable[list[str]]]]:
        return [functools.partial(_customer, stub, f"card-{run}-{n:05d}", n) for n in numbers]

    with live_ledger(database_url, tmp_path) as ledger:
        async with grpc.aio.insecure_channel(ledger.target) as channel:
            stub = pb_grpc.LedgerServiceStub(channel)
            ids = await _bounded(customers(range(ACCOUNTS_WARMUP)))
            after_warmup = series(ledger.scrape())
            ids += await _bounded(customers(range(ACCOUNTS_WARMUP, ACCOUNTS_TOTAL)))
            text = ledger.scrape()
    after_all = series(text)
    assert len(ids) >= 5 * ACCOUNTS_TOTAL
    assert len(after_all) == len(after_warmup), _diff(after_warmup, after_all)
    assert after_all == after_warmup, _diff(after_warmup, after_all)
    leaked = _leaked(text, ids)
    assert not leaked, f"{len(leaked)} ids or keys appear in /metrics, e.g. {leaked[:5]}"
    # The traffic did reach the metrics: the series are not flat because they are absent.
    assert 'grpc_method="Charge"' in text
    assert "INSUFFICIENT_CREDITS" in text


def _assets(text: str) -> set[str]:
    return {
        dict(labels)["asset"]
        for name, labels in series(text)
        if name == "ledger_credits_moved_total"
    }


async def test_caller_chosen_assets_are_capped(database_url: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:10]
    account_id = f"assets-{run}"
    # Asset names are off by default (docs/security.md); the cap matters when on.
    with live_ledger(database_url, tmp_path, {"LEDGER_METRICS_ASSET_LABELS": "1"}) as ledger:
        async with grpc.aio.insecure_channel(ledger.target) as channel:
            stub = pb_grpc.LedgerServiceStub(channel)
            await stub.CreateAccount(
                pb.CreateAccountRequest(account_id=account_id), timeout=RPC_TIMEOUT_S
            )

            def grant(n: int) -> Callable[[], Awaitable[list[str]]]:
                async def job() -> list[str]:
                    asset = f"a{run}_{n:03d}"
                    request = pb.GrantRequest(
                        account_id=account_id, asset=asset, amount=1, idempotency_key=f"{asset}-k"
                    )
                    await stub.Grant(request, timeout=RPC_TIMEOUT_S)
                    return [asset]

                return job

            await _bounded(grant(n) for n in range(ASSET_LABELS_MAX + 16))
            at_cap = ledger.scrape()
            await _bounded(grant(n) for n in range(ASSET_LABELS_MAX + 16, 3 * ASSET_LABELS_MAX))
            past_cap = ledger.scrape()
    assert len(_assets(at_cap)) == ASSET_LABELS_MAX + 1, sorted(_assets(at_cap))
    assert OTHER_ASSET in _assets(at_cap)
    assert series(past_cap) == series(at_cap), _diff(series(at_cap), series(past_cap))
