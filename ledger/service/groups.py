"""A reservation group's metadata is stored once, on its first leg.

ReserveGroup's metadata used to be copied onto every leg (and into the stored
outcome with every leg): 100 legs x 16 KB of metadata stored 1.6 MB per call
(issue 15). The rules now put it on the leg with leg_index 0 only; replies
show it on every leg as before, filled in here from that leg. Groups made
before this change carry it on every leg, which reads the same.
"""

from __future__ import annotations

import dataclasses

from ledger.domain.model import GroupResult, Reservation


def group_metadata(legs: list[Reservation]) -> dict[str, str]:
    """The group's metadata: the first leg (by leg_index) that carries any."""
    for leg in sorted(legs, key=lambda r: r.leg_index):
        if leg.metadata:
            return dict(leg.metadata)
    return {}


def with_group_metadata(result: GroupResult) -> GroupResult:
    """`result` with the group's metadata shown on every leg."""
    metadata = group_metadata(result.reservations)
    if not metadata:
        return result
    legs = [
        r if r.metadata else dataclasses.replace(r, metadata=dict(metadata))
        for r in result.reservations
    ]
    return dataclasses.replace(result, reservations=legs)  # its balances too


def needs_group_metadata(res: Reservation) -> bool:
    """True for a leg that does not carry its group's metadata itself."""
    return bool(res.group_id) and res.leg_index > 0 and not res.metadata
