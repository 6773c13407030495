"""What a caller gets when the store gave up, for CreateAccount and every read (issue 13, item 5):
ABORTED / CONTENTION after lost races, UNAVAILABLE when unreachable; never a raw exception."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ledger.domain import errors
from ledger.service.clock import SystemClock
from ledger.service.ledger import Ledger
from ledger.service.ports import SerializationConflict, StorageUnavailable


class GivingUpStore:
    """Every unit of work fails with the given exception."""

    reachable = True

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise self.exc

        return fail


ACCOUNT = "acct-1"
RID = str(uuid.uuid4())
CALLS: dict[str, Callable[[Ledger], Awaitable[Any]]] = {
    "CreateAccount": lambda ledger: ledger.create_account(ACCOUNT, {}),
    "GetAccount": lambda ledger: ledger.get_account(ACCOUNT),
    "GetBalance": lambda ledger: ledger.get_balance(ACCOUNT, "crm_credits", None, True),
    "GetReservation": lambda ledger: ledger.get_reservation(RID),
    "GetReservationGroup": lambda ledger: ledger.get_group(RID),
    "ListEntries": lambda ledger: ledger.list_entries(ACCOUNT, "", 10, ""),
}


def lost_races() -> SerializationConflict:
    exc = SerializationConflict("40001")
    exc.attempts = 8
    return exc


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_lost_races_are_contention(rpc: str) -> None:
    ledger = Ledger(GivingUpStore(lost_races()), None, SystemClock())  # type: ignore[arg-type]
    with pytest.raises(errors.Contention) as err:
        await CALLS[rpc](ledger)
    assert err.value.metadata == {"attempts": "8"}


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_unreachable_is_unavailable(rpc: str) -> None:
    store = GivingUpStore(StorageUnavailable("connection reset"))
    ledger = Ledger(store, None, SystemClock())  # type: ignore[arg-type]
    with pytest.raises(errors.DatabaseUnavailable):
        await CALLS[rpc](ledger)
