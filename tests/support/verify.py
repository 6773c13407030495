from __future__ import annotations

from ledger.storage.verify import verify


async def assert_ledger_consistent(database_url: str) -> None:
    report = await verify(database_url)
    assert report.ok, f"ledger verify found violations: {report.violations}"
