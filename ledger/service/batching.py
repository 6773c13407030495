"""SubmitBatch's shared vocabulary: how a command's error is named inside a
batch, for the Ledger (validation, permissions) and the Writer (the rules).

A failed atomic batch fails as a whole with the failing command's own error
(its code and reason), its fields prefixed with the command's place in the
request (`commands[3].charge.amount`) and its ErrorInfo metadata carrying
`batch_index`, so that a caller knows which command to fix.
"""

from __future__ import annotations

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.errors import FieldViolation

BATCH_INDEX = "batch_index"


def field_prefix(index: int, cmd: c.BatchCommand) -> str:
    """The request path of a command: `commands[3].charge`."""
    return f"commands[{index}].{cmd.method.lower()}"


def atomic_failure(
    index: int, cmd: c.BatchCommand, error: errors.LedgerError
) -> errors.LedgerError:
    """The error an atomic batch fails with when command `index` failed with `error`."""
    if isinstance(error, errors.InvalidArgument):
        prefix = field_prefix(index, cmd)
        failed: errors.LedgerError = errors.InvalidArgument(
            [FieldViolation(f"{prefix}.{v.field}", v.description) for v in error.violations]
        )
    elif isinstance(error, errors.RateLimited):
        return error  # a whole-call refusal, never a command's; its constructor differs
    else:
        failed = type(error)(
            f"commands[{index}] ({cmd.method}) failed: {error.message};"
            " the atomic batch was rolled back and nothing of it was recorded",
            dict(error.metadata),
        )
    failed.metadata[BATCH_INDEX] = str(index)
    return failed
