"""Operator subcommands of `ledger`: a gRPC client (creditledger_client) of a running server.

Exit codes scripts can rely on: 0 ok, 1 the ledger refused (insufficient
credits, not found, closed, ...), 2 usage error (bad flags, or the server said
INVALID_ARGUMENT), 3 the server could not be reached or did not answer in time.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO, TypeAlias

from creditledger_client import (
    LedgerError,
    Reservation,
    ReservationResult,
    ReservationState,
    SyncLedgerClient,
    TlsConfig,
    new_idempotency_key,
)

from ledger.operator import output
from ledger.operator.hints import EXIT_USAGE, error_report, exit_code_for

DEFAULT_TARGET = "127.0.0.1:50051"

EXIT_OK = 0

Handler = Callable[[SyncLedgerClient, argparse.Namespace, TextIO], int]
# A string: argparse's class is generic only to type checkers, not at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# --- argument types --------------------------------------------------------------------


def _amount(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a positive whole number of credits")
    return value


def _count(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (credits are integers)")
    return int(text)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 15m, 2h or 7d")
    return timedelta(seconds=int(match[1]) * _DURATION_UNITS[match[2] or "s"])


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2030-01-31T00:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


# --- parsers ---------------------------------------------------------------------------


DEFAULT_TIMEOUT_S = 10.0


def add_connection_flags(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The flags every operator command takes, before or after the command's name.

    They are on the top-level parser with their defaults and on each command
    with none (SUPPRESS), so `ledger --target H:P balance x` and `ledger balance
    x --target H:P` both work and a flag after the command wins. Help texts
    name the defaults themselves for that reason.
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    def shown(text: str, value: object) -> str:
        # The top level's help shows defaults itself (ledger.cli); a command's
        # flags have none to show, so their help names it.
        return text if defaults else f"{text} (default {value})"

    g = p.add_argument_group("connection (before or after the command)")
    g.add_argument(
        "--target",
        default=default(os.environ.get("LEDGER_TARGET", DEFAULT_TARGET)),
        help=shown("server address host:port (env LEDGER_TARGET)", DEFAULT_TARGET),
    )
    g.add_argument(
        "--token",
        default=default(os.environ.get("LEDGER_TOKEN")),
        help="bearer token sent as `authorization: Bearer ...` (env LEDGER_TOKEN)",
    )
    g.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS (implied by the --tls-* files; default: plaintext)",
    )
    g.add_argument(
        "--tls-ca", metavar="PEM", default=default(None), help="root certificates to trust"
    )
    g.add_argument(
        "--tls-cert",
        metavar="PEM",
        default=default(None),
        help="client certificate chain (mutual TLS)",
    )
    g.add_argument(
        "--tls-key", metavar="PEM", default=default(None), help="client private key (mutual TLS)"
    )
    g.add_argument(
        "--tls-server-name", metavar="NAME", default=default(None), help="expected server name"
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_S),
        metavar="SECONDS",
        help=shown("give up after this long, retries included", f"{DEFAULT_TIMEOUT_S:g}"),
    )
    g.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )


def _connection_parser() -> argparse.ArgumentParser:
    """The connection flags as a parent parser of each command, without defaults."""
    p = argparse.ArgumentParser(add_help=False)
    add_connection_flags(p, defaults=False)
    return p


def _key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key",
        help="idempotency key; reuse it to retry safely (default: a new UUID, printed)",
    )


def _meta_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--meta", action="append", type=_meta, default=[], metavar="KEY=VALUE", help="label"
    )


def add_commands(sub: Subparsers) -> None:
    """Register operator subcommands; each sets `func(args) -> int` as its default."""
    conn = _connection_parser()

    def command(
        parent: Subparsers, name: str, handler: Handler, help_: str
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[conn], help=help_, description=help_)
        p.set_defaults(func=_runner(handler))
        return p

    account = sub.add_parser("account", help="create or show an account")
    account_sub = account.add_subparsers(dest="account_command", metavar="{create,show}")
    account_sub.required = True
    p = command(account_sub, "create", _account_create, "create an account")
    p.add_argument("account_id")
    _meta_arg(p)
    p = command(account_sub, "show", _account_show, "show an account and its balances")
    p.add_argument("account_id")

    p = command(sub, "grant", _grant, "add credits to an account as a new lot")
    _account_asset_amount(p)
    _key_arg(p)
    _meta_arg(p)
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", type=_timestamp, help="when the lot expires (ISO 8601)")
    expiry.add_argument("--expires-in", type=_duration, help="lot lifetime, e.g. 30d")
    p.add_argument("--priority", type=int, help="spending order, lower first (default 100)")
    p.add_argument("--source", default="", help='e.g. "purchase", "monthly_allowance"')

    p = command(sub, "reserve", _reserve, "hold credits, all or nothing")
    _account_asset_amount(p)
    p.add_argument("--ttl", type=_duration, help="how long the hold lasts (default 15m)")
    _key_arg(p)
    _meta_arg(p)

    p = command(sub, "settle", _settle, "consume credits of a reservation")
    p.add_argument("reservation_id")
    p.add_argument("amount", type=_count, help="credits to consume (0 only with --final)")
    p.add_argument("--final", action="store_true", help="also release the rest and close it")
    _key_arg(p)

    p = command(sub, "release", _release, "give held credits back to available")
    p.add_argument("reservation_id")
    p.add_argument("amount", type=_count, nargs="?", default=0, help="default: all remaining")
    _key_arg(p)

    p = command(sub, "refund", _refund, "give settled credits back to available")
    p.add_argument("reservation_id")
    p.add_argument("amount", type=_amount)
    p.add_argument("--reason", default="", help="why, for the audit trail")
    _key_arg(p)

    p = command(sub, "charge", _charge, "reserve and settle in one step")
    _account_asset_amount(p)
    _key_arg(p)
    _meta_arg(p)

    p = command(sub, "balance", _balance, "show one balance, or all of an account's")
    p.add_argument("account_id")
    p.add_argument("asset", nargs="?", help="default: every asset of the account")
    p.add_argument("--expiring-within", type=_duration, help="also tell what expires within")
    p.add_argument("--lots", action="store_true", help="also list the lots")

    p = command(sub, "entries", _entries, "show an account's journal, newest first")
    p.add_argument("account_id")
    p.add_argument("--asset", default="", help="only this asset")
    p.add_argument("--page-size", type=int, default=50, help="1-1000 (default %(default)s)")
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--page-token", default="", help="next_page_token of the previous page")
    pages.add_argument("--all", action="store_true", help="every page")

    p = command(
        sub,
        "reservations",
        _reservations,
        "list an account's reservations, oldest first (default: the open ones)",
    )
    p.add_argument("account_id")
    p.add_argument("--asset", default="", help="only this asset (default: every asset)")
    p.add_argument(
        "--state",
        choices=sorted(_STATES),
        default="open",
        help="only reservations in this state; an open one past its expiry counts as expired",
    )
    p.add_argument("--page-size", type=int, default=50, help="1-1000")
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--page-token", default="", help="next_page_token of the previous page")
    pages.add_argument("--all", action="store_true", help="every page")

    reservation = sub.add_parser("reservation", help="show a reservation or a group")
    res_sub = reservation.add_subparsers(dest="reservation_command", metavar="{show,group}")
    res_sub.required = True
    p = command(res_sub, "show", _reservation_show, "show one reservation")
    p.add_argument("reservation_id")
    p = command(res_sub, "group", _group_show, "show a reservation group and its legs")
    p.add_argument("group_id")


def _account_asset_amount(p: argparse.ArgumentParser) -> None:
    p.add_argument("account_id")
    p.add_argument("asset", help="kind of credit, e.g. email_opens")
    p.add_argument("amount", type=_amount, help="whole credits")


# --- running ---------------------------------------------------------------------------


def _runner(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return run_command(handler, args, sys.stdout, sys.stderr)

    return run


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise _UsageError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    try:
        return TlsConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    except OSError as e:
        raise _UsageError(f"cannot read a TLS file: {e}") from None


class _UsageError(Exception):
    pass


def run_command(handler: Handler, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Runs one command; turns every LedgerError into a message and an exit code."""
    if hasattr(args, "key") and args.key is None:
        # Made here, not in the client, so that a failure can tell the operator
        # which key to retry with.
        args.key = new_idempotency_key()
    try:
        if args.timeout <= 0:
            raise _UsageError("--timeout must be > 0")
        client = SyncLedgerClient(
            args.target,
            tls=_tls(args),
            token=args.token,
            timeout_s=args.timeout,
            total_timeout_s=args.timeout,
        )
    except _UsageError as e:
        err.write(f"error: {e}\n")
        return EXIT_USAGE
    with client:
        try:
            return handler(client, args, out)
        except _UsageError as e:
            err.write(f"error: {e}\n")
            return EXIT_USAGE
        except LedgerError as e:
            context = {
                name: str(value)
                for name in ("account_id", "asset", "reservation_id")
                if (value := getattr(args, name, None))
            }
            report = error_report(
                e, target=args.target, key=getattr(args, "key", None), context=context
            )
            if args.json:
                output.write_json(err, {"error": report})
            else:
                err.write(f"error: {report['summary']}\n{report['hint']}\n")
                if report["request_id"]:
                    err.write(f"request id: {report['request_id']} (in the server's log lines)\n")
            return exit_code_for(e)


def _emit(args: argparse.Namespace, out: TextIO, value: object, text: str) -> int:
    if args.json:
        output.write_json(out, value)
    else:
        out.write(text.rstrip("\n") + "\n")
    return EXIT_OK


def _movement_text(verb: str, result: ReservationResult, key: str) -> str:
    r = result.reservation
    lines = [
        f"{verb} (key {key})"
        + (
            "  [replayed: this key was applied before; nothing changed now]"
            if result.replayed
            else ""
        ),
        "",
        output.reservation_text(r),
        "",
        output.table(output.balance_rows([result.balance]), output.BALANCE_COLUMNS),
    ]
    return "\n".join(lines)


# --- handlers --------------------------------------------------------------------------


def _account_create(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    account = c.create_account(args.account_id, dict(args.meta))
    return _emit(args, out, account, f"created account {account.account_id}")


def _account_show(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    account = c.get_account(args.account_id)
    return _emit(args, out, account, output.account_text(account))


def _grant(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    expires_at = args.expires_at
    if args.expires_in is not None:
        expires_at = datetime.now(UTC) + args.expires_in
    result = c.grant(
        args.account_id,
        args.asset,
        args.amount,
        idempotency_key=args.key,
        metadata=dict(args.meta),
        expires_at=expires_at,
        priority=args.priority,
        source=args.source,
    )
    replay = "  [replayed: this key was applied before; nothing changed now]"
    text = "\n".join(
        [
            f"granted {args.amount} {args.asset} to {args.account_id} as lot "
            f"{result.lot.lot_id} (key {args.key})" + (replay if result.replayed else ""),
            "",
            output.table(output.balance_rows([result.balance]), output.BALANCE_COLUMNS),
        ]
    )
    return _emit(args, out, {"key": args.key, **output.plain(result)}, text)


def _reserve(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    result = c.reserve(
        args.account_id,
        args.asset,
        args.amount,
        idempotency_key=args.key,
        ttl=args.ttl,
        metadata=dict(args.meta),
    )
    return _movement(args, out, "reserved", result)


def _settle(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    result = c.settle(args.reservation_id, args.amount, final=args.final, idempotency_key=args.key)
    return _movement(args, out, "settled", result)


def _release(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    result = c.release(args.reservation_id, args.amount, idempotency_key=args.key)
    return _movement(args, out, "released", result)


def _refund(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    result = c.refund(
        args.reservation_id, args.amount, reason=args.reason, idempotency_key=args.key
    )
    return _movement(args, out, "refunded", result)


def _charge(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    result = c.charge(
        args.account_id, args.asset, args.amount, idempotency_key=args.key, metadata=dict(args.meta)
    )
    return _movement(args, out, "charged", result)


def _movement(args: argparse.Namespace, out: TextIO, verb: str, result: ReservationResult) -> int:
    value = {"key": args.key, **output.plain(result)}
    return _emit(args, out, value, _movement_text(verb, result, args.key))


def _balance(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.asset is None:
        if args.lots or args.expiring_within is not None:
            raise _UsageError(
                "--lots and --expiring-within need an ASSET: ledger balance ACCOUNT ASSET"
            )
        account = c.get_account(args.account_id)
        text = output.balances_table(account.account_id, account.balances)
        return _emit(args, out, {"balances": output.plain(account.balances)}, text)
    view = c.get_balance(
        args.account_id,
        args.asset,
        expiring_within=args.expiring_within,
        include_lots=args.lots,
    )
    parts = [output.table(output.balance_rows([view.balance]), output.BALANCE_COLUMNS)]
    if args.expiring_within is not None:
        parts.append(f"\nexpiring within {args.expiring_within}: {view.expiring_amount}")
    if args.lots:
        parts.append("\n" + output.lots_table(view.lots))
    return _emit(args, out, view, "\n".join(parts))


def _entries(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.all:
        entries = tuple(c.iter_entries(args.account_id, asset=args.asset, page_size=args.page_size))
        value: object = {"entries": output.plain(entries), "next_page_token": ""}
        return _emit(args, out, value, output.entries_table(entries))
    page = c.list_entries(
        args.account_id, asset=args.asset, page_size=args.page_size, page_token=args.page_token
    )
    text = output.entries_table(page.entries)
    if page.next_page_token:
        text += f"\n\nmore: add --page-token {page.next_page_token} (or use --all)"
    return _emit(args, out, page, text)


_STATES = {
    "open": ReservationState.OPEN,
    "closed": ReservationState.CLOSED,
    "expired": ReservationState.EXPIRED,
    "all": ReservationState.UNSPECIFIED,
}
_RESERVATION_HEADER = (
    "RESERVATION", "ASSET", "AMOUNT", "REMAINING", "SETTLED", "STATE", "CREATED", "EXPIRES",
)  # fmt: skip


def _reservation_rows(reservations: Sequence[Reservation]) -> list[list[object]]:
    return [
        [r.reservation_id, r.asset, r.amount, r.remaining, r.settled, r.state, r.created_at,
         r.expires_at]
        for r in reservations
    ]  # fmt: skip


def _reservations(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    state = _STATES[args.state]
    if args.all:
        found = tuple(
            c.iter_reservations(
                args.account_id, asset=args.asset, state=state, page_size=args.page_size
            )
        )
        value: object = {"reservations": output.plain(found), "next_page_token": ""}
        return _emit(args, out, value, output.table(_reservation_rows(found), _RESERVATION_HEADER))
    page = c.list_reservations(
        args.account_id,
        asset=args.asset,
        state=state,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    text = output.table(_reservation_rows(page.reservations), _RESERVATION_HEADER)
    if page.next_page_token:
        text += f"\n\nmore: add --page-token {page.next_page_token} (or use --all)"
    return _emit(args, out, page, text)


def _reservation_show(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    reservation = c.get_reservation(args.reservation_id)
    return _emit(args, out, reservation, output.reservation_text(reservation))


def _group_show(c: SyncLedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    group = c.get_reservation_group(args.group_id)
    rows = [
        [r.leg_key, r.reservation_id, r.account_id, r.asset, r.amount, r.remaining, r.state]
        for r in group.reservations
    ]
    header = ("LEG", "RESERVATION", "ACCOUNT", "ASSET", "AMOUNT", "REMAINING", "STATE")
    text = f"group {group.group_id}\n\n" + output.table(rows, header)
    return _emit(args, out, group, text)
