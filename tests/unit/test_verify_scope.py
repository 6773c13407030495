"""`ledger verify --account`: every check and warning says how its rows name an account."""

from __future__ import annotations

import re

from ledger.storage import verify


def test_every_check_has_an_account_scope_its_rows_can_carry() -> None:
    for name, _, sql in verify.CHECKS + verify.WARNINGS:
        assert name in verify._SCOPE_OF, f"{name}: add it to _SCOPE_OF (the key its rows carry)"
        column = verify._SCOPE_OF[name]
        assert column in verify._ACCOUNT_SCOPE
        # The outermost SELECT list names that column (or aliases something to it).
        assert re.search(rf"\b{column}\b", sql), f"{name}: its rows carry no {column}"
