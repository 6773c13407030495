"""How long data is kept: idempotency keys (applied and refused) and closed reservations.

docs/operations.md ("Retention") says what each setting means for callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class IdempotencyRetention:
    # A key whose request took effect (or was replayed) answers with its first
    # outcome for this long: a caller's retries must end well within it.
    applied: timedelta = timedelta(days=7)
    # A key whose request was refused by a rule (insufficient credits, a closed
    # reservation, ...): nothing happened, so the record only serves retries that
    # follow at once. Kept shorter: refused requests cost storage and no money.
    refused: timedelta = timedelta(days=1)
    # The storage grid (one partition per `partition`): a key is physically
    # gone at most one `partition` after it expired. Finer = tighter bound on
    # rows, but more partitions for each lookup to probe.
    partition: timedelta = timedelta(hours=12)

    def expires_at(self, now: datetime, refused: bool) -> datetime:
        return now + (self.refused if refused else self.applied)

    def horizon(self) -> timedelta:
        """How far ahead storage must be ready: the longest retention, plus two
        partitions so that a partition exists long before its first row."""
        return max(self.applied, self.refused) + 2 * self.partition

    def problems(self) -> list[str]:
        out = []
        if min(self.applied, self.refused) <= timedelta(0) or self.partition <= timedelta(0):
            out.append("idempotency retentions and partition width must be positive")
        elif self.horizon() / self.partition > 1000:
            out.append(
                "idempotency partition width is too fine for the retention (over 1000"
                " partitions would be live): raise --idempotency-partition-s"
            )
        return out
