"""Logs: one JSON object per line (default), or a human-readable format for `make run`.

Request lines carry method, code, duration, reason, account_id and replayed;
never tokens, idempotency keys or metadata maps.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rpc = getattr(record, "rpc", None)
        if isinstance(rpc, dict):
            out.update(rpc)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _escapes() -> dict[int, str]:
    """Backslash, the C0 and C1 controls, DEL, the Unicode line and paragraph
    separators and the bidi overrides, each as a visible escape."""
    codes = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
    codes += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    table = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in codes}
    table.update({ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    return table


_ESCAPES = _escapes()


def escape(value: object) -> str:
    """`value` as text that cannot break a log line: a caller's `\\n` in an account id
    must not start a forged line (issue 13, item 9). Backslashes are doubled, so an
    escape in the output always means the character was there."""
    return str(value).translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """One line per record, every field escaped; a traceback follows on lines
    that start with "  | ", which no record's line does."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        rpc = getattr(record, "rpc", None)
        if isinstance(rpc, dict):
            reason = escape(rpc.get("reason", ""))
            line = (
                f"{ts} {escape(rpc.get('method', '')):<20} {escape(rpc.get('code', '')):<20}"
                f" {_ms(rpc.get('duration_ms'))} ms {escape(rpc.get('account_id', ''))}"
                f"{' ' + reason if reason else ''}{' (replayed)' if rpc.get('replayed') else ''}"
            )
        else:
            line = (
                f"{ts} {escape(record.levelname):<7} {escape(record.name)}:"
                f" {escape(record.getMessage())}"
            )
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n  | {escape(part)}" for part in trace.split("\n"))
        return line


def _ms(value: object) -> str:
    return f"{value:>8.2f}" if isinstance(value, (int, float)) else f"{escape(value):>8}"


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncpg and grpc are chatty at debug; keep them at warning unless asked.
    for noisy in ("asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
