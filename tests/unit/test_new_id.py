"""The writer's ids (reservations, lots, transactions): random version-4 UUIDs in
the form str(uuid.uuid4()) gives, built without the uuid module's objects."""

from __future__ import annotations

import uuid

from ledger.domain.workingset import new_id


def test_ids_are_random_version_4_uuids_in_canonical_form() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lowercase, dashed, 36 characters
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_every_free_bit_varies() -> None:
    """122 random bits: none of them stuck (a wrong mask would pin some)."""
    ids = [uuid.UUID(new_id()).int for _ in range(2_000)]
    fixed = uuid.UUID(int=0, version=4).int  # only the version and variant bits set
    varying = 0
    for value in ids:
        varying |= value ^ ids[0]
    assert varying == ((1 << 128) - 1) & ~(0xF << 76) & ~(0x3 << 62)
    assert all(v & ((0xF << 76) | (0x3 << 62)) == fixed for v in ids)
