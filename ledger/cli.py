"""`ledger`: serve, migrate, verify, and the operator commands (ledger.operator)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    from ledger.app import App, StartupError

    cfg = config.from_args(args)
    problems = cfg.problems()
    if problems:
        for problem in problems:
            print(f"ledger serve: {problem}", file=sys.stderr)
        return 2
    ledger_logging.configure(cfg.log_level, cfg.log_format)
    if cfg.fronts > 1:
        from ledger.fronts import Fronts

        argv: list[str] = args.argv
        return Fronts(cfg, argv[argv.index("serve") + 1 :]).run()

    async def main() -> int:
        try:
            await App(cfg).run_until_signalled()
        except StartupError as exc:
            print(f"ledger serve: {exc}", file=sys.stderr)
            return 2
        return 0

    return _run(main())


def cmd_migrate(args: argparse.Namespace) -> int:
    from ledger.storage.pool import migrate, set_up_serving_role, wait_for_database
    from ledger.storage.roles import RoleError

    ledger_logging.configure("info", "text")
    # The serving role's password from the environment only: argv shows in `ps`.
    password = os.environ.get("LEDGER_SERVING_ROLE_PASSWORD") or None

    async def main() -> int:
        url, embedded = await _resolve_url(args)
        try:
            await wait_for_database(url, 30.0)
            applied = await migrate(url)
            if args.serving_role:
                await set_up_serving_role(url, args.serving_role, password)
            # Partitions ready at once: a serving role cannot make them (`ledger maintain`).
            maintained = await _maintain_round(url, args)
        except RoleError as exc:
            print(f"ledger migrate: {exc}", file=sys.stderr)
            return 2
        finally:
            if embedded is not None:
                embedded.stop()
        print("migrations applied: " + (", ".join(applied) if applied else "none (up to date)"))
        if args.serving_role:
            print(f"serving role {args.serving_role}: created if missing, rights granted")
        print(maintained)
        return 0

    return _run(main())


def _database_error(command: str, exc: BaseException) -> int:
    """A database that cannot be reached or read: exit 3, never a traceback (nor 1,
    which for verify means a broken invariant)."""
    print(
        f"ledger {command}: cannot read the database: {type(exc).__name__}: {exc}", file=sys.stderr
    )
    return EXIT_UNREACHABLE


async def _maintain_round(url: str, args: argparse.Namespace) -> str:
    """One round of idempotency partition maintenance as this (owner) role: ready
    for every key written in the next --ahead-hours; the summary line."""
    from datetime import UTC, datetime, timedelta

    from ledger.storage.pool import maintain_partitions

    retention = config.idempotency_retention_from_args(args)
    now = datetime.now(UTC)
    horizon = now + retention.horizon()
    result = await maintain_partitions(
        url, horizon + timedelta(hours=args.ahead_hours), retention.partition, now
    )
    if result.skipped:
        return "ledger maintain: skipped (another process holds the maintenance lock)"
    ready = result.covered_until or now
    return (
        f"ledger maintain: {result.created} idempotency partitions created,"
        f" {result.dropped} expired ones dropped; ready until"
        f" {ready.isoformat(timespec='seconds')}"
        f" ({(ready - horizon).total_seconds() / 3600:.1f} h ahead of the longest retention)"
    )


def cmd_maintain(args: argparse.Namespace) -> int:
    """`ledger maintain`: idempotency partitions, as the owner role (a CronJob, hourly)."""
    from ledger.storage.pool import wait_for_database

    ledger_logging.configure("info", "text")
    problems = config.idempotency_retention_from_args(args).problems()
    if args.ahead_hours <= 0:
        problems.append("--ahead-hours must be positive")
    if problems:
        for problem in problems:
            print(f"ledger maintain: {problem}", file=sys.stderr)
        return 2

    async def main() -> int:
        url, embedded = await _resolve_url(args)
        try:
            await wait_for_database(url, 30.0)
            print(await _maintain_round(url, args))
        finally:
            if embedded is not None:
                embedded.stop()
        return 0

    return _run(main())


def _add_maintenance_flags(p: argparse.ArgumentParser) -> None:
    config.add_idempotency_flags(p)
    p.add_argument(
        "--ahead-hours",
        type=float,
        default=48.0,
        help="make partitions for every key written in the next this many hours (default 48;"
        " run hourly, so a missed run or two change nothing)",
    )


def cmd_verify(args: argparse.Namespace) -> int:
    import time

    import asyncpg

    from ledger.observability.proof import push_result
    from ledger.storage.verify import account_exists, verify

    if args.account is not None and args.pushgateway:
        print(
            "ledger verify: --account and --pushgateway do not go together: a run scoped to"
            " one account must not stand for the scheduled proof of the whole ledger",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def main() -> int:
        url, embedded = await _resolve_url(args)
        started = time.monotonic()
        try:
            if args.account is not None and not await account_exists(url, args.account):
                print(f"ledger verify: no account {args.account}", file=sys.stderr)
                return EXIT_REFUSED
            report = await verify(url, account_id=args.account)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return _database_error("verify", exc)
        finally:
            if embedded is not None:
                embedded.stop()
        _print_report(report, args)
        code = EXIT_OK if report.ok else EXIT_REFUSED
        if args.pushgateway:
            try:
                push_result(
                    args.pushgateway,
                    ok=report.ok,
                    violations=len(report.violations),
                    duration_s=time.monotonic() - started,
                    finished_at_s=time.time(),
                )
            except OSError as exc:
                print(
                    f"ledger verify: could not push the result to {args.pushgateway}: {exc}",
                    file=sys.stderr,
                )
                return code if code != EXIT_OK else EXIT_PUSH_FAILED
        return code

    return _run(main())


def _print_report(report: Any, args: argparse.Namespace) -> None:
    from ledger.storage.verify import describe

    scope = f" (account {args.account})" if args.account is not None else ""
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "account_id": args.account,
                    "checked": report.checked,
                    "counts": report.counts,
                    "violations": report.violations,
                    "warnings": report.warnings,
                },
                default=str,
            )
        )
        return
    print(f"ledger verify{scope}: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    for name in report.checked:
        mark = "FAIL" if name in report.violations else "ok  "
        print(f"  {mark} {name}: {describe(name)}")
        for row in report.violations.get(name, []):
            print(f"         {row}")
    for name, rows in report.warnings.items():
        print(f"  WARN {name}: {describe(name)} ({len(rows)} shown)")
    if report.ok:
        print(f"ledger verify{scope}: every invariant holds")
    else:
        print(
            f"ledger verify{scope}: {len(report.violations)} invariant(s) violated",
            file=sys.stderr,
        )


def cmd_migrations(args: argparse.Namespace) -> int:
    import asyncpg

    from ledger.storage.pool import migration_status

    async def main() -> int:
        url, embedded = await _resolve_url(args)
        try:
            status = await migration_status(url)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return _database_error("migrations", exc)
        finally:
            if embedded is not None:
                embedded.stop()
        pending = [name for name, applied_at in status if applied_at is None]
        if args.json:
            rows = [{"name": n, "applied_at": a.isoformat() if a else None} for n, a in status]
            print(json.dumps({"migrations": rows, "pending": pending}))
        else:
            for name, applied_at in status:
                print(
                    f"  {'applied ' + applied_at.isoformat() if applied_at else 'PENDING':<40} {name}"
                )
            print(
                f"ledger migrations: {len(status) - len(pending)} applied, {len(pending)} pending"
                + (" (run `ledger migrate`)" if pending else "")
            )
        return EXIT_REFUSED if pending else EXIT_OK

    return _run(main())


def cmd_archive_reservations(args: argparse.Namespace) -> int:
    """Move closed reservations past their expiry by more than --older-than-days
    into reservations_archive, in short batches (docs/operations.md, "Retention")."""
    from datetime import UTC, datetime, timedelta

    from ledger.service.ports import SerializationConflict
    from ledger.storage.pool import PoolSettings, create_pool
    from ledger.storage.postgres import PostgresStore

    if args.older_than_days <= 0 or args.batch <= 0:
        print("ledger archive reservations: --older-than-days and --batch must be positive",
              file=sys.stderr)  # fmt: skip
        return 2

    async def main() -> int:
        url, embedded = await _resolve_url(args)
        total = 0
        now = datetime.now(UTC)
        cutoff = now - timedelta(days=args.older_than_days)
        try:
            pool = await create_pool(
                url, PoolSettings(min_size=1, max_size=1, command_timeout_s=60.0)
            )
            store = PostgresStore(pool)
            conflicts = 0
            try:
                while True:
                    try:
                        moved = await store.archive_reservations(cutoff, now, args.batch)
                    except SerializationConflict:
                        conflicts += 1  # a batch touched one of them: take the round again
                        if conflicts > 100:
                            raise
                        await asyncio.sleep(0.05)
                        continue
                    total += moved
                    if moved < args.batch:
                        break
            finally:
                await pool.close()
        finally:
            if embedded is not None:
                embedded.stop()
        print(
            f"ledger archive reservations: {total} archived"
            f" (closed, expired before {cutoff.isoformat(timespec='seconds')})"
        )
        return 0

    return _run(main())


def _add_retention_commands(sub: Any) -> None:
    archive = sub.add_parser("archive", help="move old history out of the hot tables")
    asub = archive.add_subparsers(dest="archive_command", required=True)
    res = asub.add_parser(
        "reservations",
        help="move closed reservations into reservations_archive (GetReservation still answers)",
    )
    config.add_database_flags(res)
    res.add_argument(
        "--older-than-days",
        type=float,
        default=90.0,
        help="archive those whose expires_at is older than this (default 90: Refund of an"
        " archived reservation answers RESERVATION_NOT_FOUND)",
    )
    res.add_argument("--batch", type=int, default=1000, help="reservations per transaction")
    res.set_defaults(func=cmd_archive_reservations)


def cmd_token_new(args: argparse.Namespace) -> int:
    from ledger.security.tokens import new_token, token_hash_hex

    token = new_token()
    if args.json:
        print(json.dumps({"token": token, "sha256": token_hash_hex(token)}))
    else:
        print(f"token:  {token}")
        print(f"sha256: {token_hash_hex(token)}")
        print(
            "Give the token to the caller (it is shown only now); put the sha256 in its"
            " token_sha256 list in the caller file.",
            file=sys.stderr,
        )
    return 0


def cmd_token_hash(args: argparse.Namespace) -> int:
    from ledger.security.tokens import token_hash_hex

    # From standard input, never from argv: arguments show in `ps` and shell history.
    token = sys.stdin.readline().strip()
    if not token:
        print("ledger token hash: give the token on standard input", file=sys.stderr)
        return 2
    print(token_hash_hex(token))
    return 0


def cmd_callers_check(args: argparse.Namespace) -> int:
    from ledger.security.callers import CallerFileError, load

    try:
        book = load(Path(args.file))
    except CallerFileError as exc:
        print(f"ledger callers check: {exc}", file=sys.stderr)
        return 1
    for c in book.callers:
        perms = ",".join(sorted(p.value for p in c.access.permissions))
        scope = "*" if c.access.scope is None else " ".join(c.access.scope)
        rate = f"{c.rate.per_s:g}/s burst {c.rate.burst}" if c.rate.limited else "unlimited"
        print(
            f"{c.id}: {perms} on {scope}; {len(c.token_hashes)} token(s),"
            f" {len(c.cert_identities)} certificate identity(ies); {rate}"
        )
    print(f"ledger callers check: {args.file} is valid ({len(book.callers)} callers)")
    return 0


def _add_security_commands(sub: Any) -> None:
    token = sub.add_parser("token", help="make bearer tokens and their hashes for a caller file")
    tsub = token.add_subparsers(dest="token_command", required=True)
    new = tsub.add_parser("new", help="print a new random token and its SHA-256")
    new.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print {token, sha256} as JSON",
    )
    new.set_defaults(func=cmd_token_new)
    hashp = tsub.add_parser("hash", help="print the SHA-256 of the token read from stdin")
    hashp.set_defaults(func=cmd_token_hash)
    callers = sub.add_parser("callers", help="caller file tools")
    csub = callers.add_subparsers(dest="callers_command", required=True)
    check = csub.add_parser("check", help="validate a caller file (before a SIGHUP)")
    check.add_argument("file", help="the caller file (TOML)")
    check.set_defaults(func=cmd_callers_check)


EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_PUSH_FAILED = 0, 1, 2, 3, 4

EXIT_CODES = """\
exit codes (scripts may rely on them; docs/operations.md):
  0  done; verify: every invariant holds; migrations: none pending
  1  the ledger refused (insufficient credits, not found, closed, ...);
     verify: an invariant is violated; migrations: some are pending
  2  usage error: bad flags, or the server answered INVALID_ARGUMENT
  3  the server or the database could not be reached, or did not answer in time
  4  verify passed but its result could not be pushed (--pushgateway)
"""


# Flags whose value may be a secret (a token, a URL with a password): their
# defaults come from the environment and must not be printed by --help.
_SECRET_DESTS = frozenset({"token", "database_url"})


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default (never a secret's), and the epilog (exit codes) as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in _SECRET_DESTS or action.default in (None, False, ""):
            return action.help
        return super()._get_help_string(action)


class LedgerParser(argparse.ArgumentParser):
    """Every `ledger` parser and subparser (add_parser makes instances of the parent's
    class): defaults in the help, the exit codes below it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("epilog", EXIT_CODES)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from ledger.operator.commands import add_commands, add_connection_flags

    parser = LedgerParser(prog="ledger", description="Creditledger: credit balances, spent safely.")
    # Also here, so that `ledger --target H:P balance x` works (the operator commands).
    add_connection_flags(parser, defaults=True)
    sub: Any = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve the gRPC API (embedded PostgreSQL without --database-url)"
    )
    config.add_serve_flags(serve)
    serve.set_defaults(func=cmd_serve)
    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    config.add_database_flags(mig)
    mig.add_argument(
        "--serving-role",
        default=os.environ.get("LEDGER_SERVING_ROLE", ""),
        metavar="NAME",
        help="also create the role `serve` logs in as (if missing) and grant it only the"
        " rights it uses (env LEDGER_SERVING_ROLE; its password from env"
        " LEDGER_SERVING_ROLE_PASSWORD); run as the owner role",
    )
    _add_maintenance_flags(mig)
    mig.set_defaults(func=cmd_migrate)
    maint = sub.add_parser(
        "maintain",
        help="create the idempotency partitions ahead and drop expired ones, as the owner role"
        " (hourly: a CronJob)",
    )
    config.add_database_flags(maint)
    _add_maintenance_flags(maint)
    maint.set_defaults(func=cmd_maintain)
    ver = sub.add_parser("verify", help="check every ledger invariant; exit 1 on any violation")
    config.add_database_flags(ver)
    ver.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the report as JSON"
    )
    ver.add_argument(
        "--account",
        metavar="ID",
        help="report only what concerns this account (its balances, lots, reservations,"
        " transactions and assets); the checks still read the whole ledger",
    )
    ver.add_argument(
        "--pushgateway",
        metavar="URL",
        default=os.environ.get("LEDGER_VERIFY_PUSHGATEWAY", ""),
        help="push the result as metrics to this Prometheus Pushgateway, job"
        " creditledger-verify (env LEDGER_VERIFY_PUSHGATEWAY; the scheduled proof)",
    )
    ver.set_defaults(func=cmd_verify)
    mst = sub.add_parser(
        "migrations", help="list applied and pending migrations; exit 1 when any is pending"
    )
    config.add_database_flags(mst)
    mst.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the list as JSON"
    )
    mst.set_defaults(func=cmd_migrations)
    _add_security_commands(sub)
    _add_retention_commands(sub)
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # `serve --fronts` passes it on
    result: int = args.func(args)
    return result
