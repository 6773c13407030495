"""What every log line of one call carries: its request id, trace id and reservation id.

The transport sets these context variables when a call starts (each gRPC call
runs in its own task, so they never leak between calls); `ContextFilter` copies
them onto every log record made while the call runs, whichever logger makes it.
Standard library only, so any layer may log inside a call.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("ledger_request_id", default="")
TRACE_ID: ContextVar[str] = ContextVar("ledger_trace_id", default="")
RESERVATION_ID: ContextVar[str] = ContextVar("ledger_reservation_id", default="")

# The record attributes the filter sets, and the JSON keys the formatter writes.
FIELDS = ("request_id", "trace_id", "reservation_id")


class ContextFilter(logging.Filter):
    """Adds request_id, trace_id and reservation_id ("" outside a call) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.trace_id = TRACE_ID.get()
        record.reservation_id = RESERVATION_ID.get()
        return True
