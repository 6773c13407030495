"""`ledger`: serve, migrate, verify, and the operator commands (ledger.operator)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ledger import config
from ledger.observability import logging as ledger_logging


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        result: int = uvloop.run(coro)
        return result
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)


async def _resolve_url(args: argparse.Namespace) -> tuple[str, Any]:
    """The database URL, starting the embedded PostgreSQL when none is given."""
    if args.database_url:
        return args.database_url, None
    from ledger.storage.pool import EmbeddedPostgres

    embedded = EmbeddedPostgres(Path(args.data_dir))
    return await asyncio.to_thread(embedded.start), embedded


def cmd_serve(args: argparse.Namespace) -> int:
    from ledger.app import App

    cfg = config.from_args(args)
    ledger_logging.configure(cfg.log_level, cfg.log_format)

    async def main() -> int:
        await App(cfg).run_until_signalled()
        return 0

    return _run(main())


def cmd_migrate(args: argparse.Namespace) -> int:
    from ledger.storage.pool import migrate, wait_for_database

    ledger_logging.configure("info", "text")

    async def main() -> int:
        url, embedded = await _resolve_url(args)
        try:
            await wait_for_database(url, 30.0)
            applied = await migrate(url)
        finally:
            if embedded is not None:
                embedded.stop()
        print("migrations applied: " + (", ".join(applied) if applied else "none (up to date)"))
        return 0

    return _run(main())


def cmd_verify(args: argparse.Namespace) -> int:
    from ledger.storage.verify import describe, verify

    async def main() -> int:
        url, embedded = await _resolve_url(args)
        try:
            report = await verify(url)
        finally:
            if embedded is not None:
                embedded.stop()
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": report.ok,
                        "checked": report.checked,
                        "counts": report.counts,
                        "violations": report.violations,
                        "warnings": report.warnings,
                    },
                    default=str,
                )
            )
            return 0 if report.ok else 1
        print("ledger verify: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
        for name in report.checked:
            mark = "FAIL" if name in report.violations else "ok  "
            print(f"  {mark} {name}: {describe(name)}")
            for row in report.violations.get(name, []):
                print(f"         {row}")
        for name, rows in report.warnings.items():
            print(f"  WARN {name}: {describe(name)} ({len(rows)} shown)")
        if report.ok:
            print("ledger verify: every invariant holds")
            return 0
        print(f"ledger verify: {len(report.violations)} invariant(s) violated", file=sys.stderr)
        return 1

    return _run(main())


def build_parser() -> argparse.ArgumentParser:
    from ledger.operator.commands import add_commands

    parser = argparse.ArgumentParser(
        prog="ledger", description="Creditledger: credit balances, spent safely."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve the gRPC API (embedded PostgreSQL without --database-url)"
    )
    config.add_serve_flags(serve)
    serve.set_defaults(func=cmd_serve)
    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    config.add_database_flags(mig)
    mig.set_defaults(func=cmd_migrate)
    ver = sub.add_parser("verify", help="check every ledger invariant; exit 1 on any violation")
    config.add_database_flags(ver)
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.set_defaults(func=cmd_verify)
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
