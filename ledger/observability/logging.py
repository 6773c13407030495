"""Logs: one JSON object per line (default), or a human-readable format for `make run`.

Request lines carry method, code, duration, reason, account_id and replayed;
never tokens, idempotency keys or metadata maps. Every line made during a call
also carries its request_id (and trace_id with tracing on, reservation_id for
calls that name one): ledger.observability.context.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from ledger.observability.context import FIELDS, ContextFilter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, "")
            if value:
                out[name] = value
        rpc = getattr(record, "rpc", None)
        if isinstance(rpc, dict):
            out.update(rpc)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        rpc = getattr(record, "rpc", None)
        if isinstance(rpc, dict):
            line = (
                f"{ts} {rpc['method']:<20} {rpc['code']:<20} {rpc['duration_ms']:>8.2f} ms"
                f" {rpc['account_id']}{' ' + rpc['reason'] if rpc['reason'] else ''}"
                f"{' (replayed)' if rpc['replayed'] else ''}"
            )
        else:
            line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        request_id = getattr(record, "request_id", "")
        if request_id:
            line += f" [{request_id}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncpg and grpc are chatty at debug; keep them at warning unless asked.
    for noisy in ("asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
