"""The record of a torture run: every operation, every attempt, every fault, every violation.

Written as JSON lines to torture-results/ when a run finds a violation (or with
--keep-history), so that the run can be read, diffed and replayed (the header
holds everything `--replay` needs to run the same schedule again).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

MUTATING_KINDS = ("grant", "reserve", "reserve_group", "settle", "release", "refund", "charge")


@dataclass
class Attempt:
    """One try of an operation."""

    t: float
    target: str
    code: str
    reason: str = ""
    replayed: bool = False
    message: str = ""


@dataclass
class Op:
    """One logical mutating operation: one idempotency key."""

    op_id: int
    client: int
    kind: str
    key: str
    request: Message
    account: str = ""
    asset: str = ""
    amount: int = 0
    reservation_id: str = ""
    final: bool = False
    # Why the harness expects it may be refused (ghost account, fake id, ...).
    expect: str = ""
    t_start: float = 0.0
    t_end: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    # pending -> ok | refused | unknown; unknown ops are resolved after healing.
    status: str = "pending"
    code: str = ""
    reason: str = ""
    replayed: bool = False
    resolved: bool = False
    response: Message | None = None
    # Ids the response named: reservation ids (by leg key for groups), lot id, group id.
    reservation_ids: dict[str, str] = field(default_factory=dict)
    lot_id: str = ""
    group_id: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return self.status in ("ok", "refused")

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "op",
            "op_id": self.op_id,
            "client": self.client,
            "kind": self.kind,
            "key": self.key,
            "request": json_format.MessageToDict(self.request, preserving_proto_field_name=True),
            "expect": self.expect,
            "t_start": round(self.t_start, 4),
            "t_end": round(self.t_end, 4),
            "attempts": [a.__dict__ for a in self.attempts],
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
            "replayed": self.replayed,
            "resolved": self.resolved,
            "reservation_ids": self.reservation_ids,
            "lot_id": self.lot_id,
            "group_id": self.group_id,
            "response": (
                json_format.MessageToDict(self.response, preserving_proto_field_name=True)
                if self.response is not None
                else None
            ),
            "notes": self.notes,
        }


@dataclass
class Fault:
    """One injected fault, with when it started and ended (seconds since the run began)."""

    kind: str
    t_start: float
    t_end: float = 0.0
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": "fault", **self.__dict__}


@dataclass
class Violation:
    """One broken invariant: what, the ops involved, and the evidence."""

    kind: str
    detail: str
    op_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"type": "violation", **self.__dict__}


def write_history(
    path: Path,
    header: dict[str, Any],
    ops: list[Op],
    faults: list[Fault],
    violations: list[Violation],
    summary: str,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        out.write(json.dumps({"type": "header", "written_at": time.time(), **header}) + "\n")
        for fault in faults:
            out.write(json.dumps(fault.to_json()) + "\n")
        for op in sorted(ops, key=lambda o: o.t_start):
            out.write(json.dumps(op.to_json()) + "\n")
        for violation in violations:
            out.write(json.dumps(violation.to_json()) + "\n")
        out.write(json.dumps({"type": "summary", "line": summary}) + "\n")


def read_header(path: Path) -> dict[str, Any]:
    """The header line of a history file (what --replay needs)."""
    with path.open() as src:
        first = json.loads(src.readline())
    if first.get("type") != "header":
        raise ValueError(f"{path}: first line is not a torture header")
    return dict(first)
