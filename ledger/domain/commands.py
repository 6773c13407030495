"""Commands: one per mutating RPC. `validate()` raises InvalidArgument naming
every bad field; `fingerprint()` is what an idempotency key is bound to."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from ledger.domain import limits
from ledger.domain.access import Scope
from ledger.domain.errors import FieldViolation, InvalidArgument
from ledger.domain.model import ALLOWANCE, CATEGORIES, PAID, REFUND, ROLLOVER, Rollover
from ledger.domain.periods import COUNT_MAX, COUNT_MIN, Unit, longest_period_s, zone

_ACCOUNT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_ASSET = re.compile(r"[a-z0-9_]{1,64}")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_CURRENCY = re.compile(r"[A-Z]{3}")
# A caller's own lot category (the set is documented: "x_" and a token).
CATEGORY_CUSTOM = re.compile(r"x_[a-z0-9_]{1,30}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Violations:
    """Collects field violations, then raises them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field_name, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    def account_id(self, name: str, value: str) -> None:
        if value.startswith("@"):
            self.add(name, "must not start with '@' (reserved for system accounts)")
        elif not _ACCOUNT_ID.fullmatch(value):
            self.add(
                name,
                f"must be 1-{limits.ACCOUNT_ID_LEN_MAX} (ACCOUNT_ID_LEN_MAX) chars of [A-Za-z0-9._:@-]",
            )

    def asset(self, name: str, value: str) -> None:
        if not _ASSET.fullmatch(value):
            self.add(name, f"must be 1-{limits.ASSET_LEN_MAX} (ASSET_LEN_MAX) chars of [a-z0-9_]")

    def amount(self, name: str, value: int, *, allow_zero: bool = False) -> None:
        low = 0 if allow_zero else 1
        if not low <= value <= limits.AMOUNT_MAX:
            self.add(name, f"must be between {low} and {limits.AMOUNT_MAX} (AMOUNT_MAX)")

    def printable(self, name: str, value: str, max_len: int, limit_name: str) -> None:
        if not value or len(value) > max_len or not _PRINTABLE.fullmatch(value):
            self.add(name, f"must be 1-{max_len} ({limit_name}) printable ASCII chars")

    def idempotency_key(self, value: str) -> None:
        self.printable(
            "idempotency_key", value, limits.IDEMPOTENCY_KEY_LEN_MAX, "IDEMPOTENCY_KEY_LEN_MAX"
        )

    def text(self, name: str, value: str, max_len: int, limit_name: str) -> None:
        if len(value) > max_len:
            self.add(name, f"must be at most {max_len} chars ({limit_name})")
        elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            self.add(name, "must not contain control characters")

    def metadata(self, name: str, value: dict[str, str]) -> None:
        if len(value) > limits.METADATA_ENTRIES_MAX:
            self.add(name, f"at most {limits.METADATA_ENTRIES_MAX} entries (METADATA_ENTRIES_MAX)")
            return
        for k, v in value.items():
            if not k or len(k) > limits.METADATA_KEY_LEN_MAX or not _PRINTABLE.fullmatch(k):
                self.add(
                    f"{name}[{k[:32]!r}]",
                    f"key must be 1-{limits.METADATA_KEY_LEN_MAX} (METADATA_KEY_LEN_MAX) printable ASCII chars",
                )
            # Bytes of UTF-8, as documented (and as stored): 512 "é" are 1024 bytes.
            if (
                len(v.encode("utf-8", "surrogatepass")) > limits.METADATA_VALUE_LEN_MAX
                or "\x00" in v
            ):
                self.add(
                    f"{name}[{k[:32]!r}]",
                    f"value must be at most {limits.METADATA_VALUE_LEN_MAX} bytes of UTF-8 (METADATA_VALUE_LEN_MAX), no NUL",
                )

    def target(self, account_id: str, asset: str, amount: int, idempotency_key: str) -> None:
        """The fields every account-addressed mutation has, in the order errors list them."""
        self.account_id("account_id", account_id)
        self.asset("asset", asset)
        self.amount("amount", amount)
        self.idempotency_key(idempotency_key)

    def ttl(self, name: str, ttl_s: float | None) -> None:
        if ttl_s is not None and not limits.TTL_MIN_S <= ttl_s <= limits.TTL_MAX_S:
            self.add(
                name,
                f"must be between {limits.TTL_MIN_S} s and {limits.TTL_MAX_S} s (TTL_MAX_S, 30 days)",
            )

    def preconditions(
        self,
        items: tuple[Precondition, ...],
        pairs: set[tuple[str, str]] | None,
        named: bool,
        pooled_asset: str = "",
    ) -> None:
        """`pairs`: the pairs the command touches (None: known only when it runs, then
        the pair must be left empty); `named`: each must name its pair (a group's);
        `pooled_asset`: a spend's pair may also be one of its account's pools' for
        that asset (which pools the rules know: rules.check_preconditions)."""
        if len(items) > limits.PRECONDITIONS_MAX:
            self.add(
                "preconditions",
                f"at most {limits.PRECONDITIONS_MAX} preconditions (PRECONDITIONS_MAX)",
            )
            return
        seen: set[tuple[str, str]] = set()
        for i, p in enumerate(items):
            name = f"preconditions[{i}]"
            pair = (p.account_id, p.asset)
            if pairs is None:
                if p.account_id or p.asset:
                    self.add(
                        f"{name}.account_id",
                        "must be empty: the condition is on the reservation's own pair",
                    )
            elif pooled_asset and p.account_id and p.asset == pooled_asset:
                self.account_id(f"{name}.account_id", p.account_id)
            elif (p.account_id or p.asset or named) and pair not in pairs:
                self.add(
                    f"{name}.account_id",
                    "account_id and asset must name a pair the command touches"
                    + ("" if named else " (or both be empty)"),
                )
            if pair in seen:
                self.add(name, "at most one precondition per pair")
            seen.add(pair)
            if p.version is None and p.available is None and p.held is None:
                self.add(name, "must set version, available or held")
            if p.version is not None and not 0 <= p.version <= limits.INT64_MAX:
                self.add(f"{name}.version", f"must be between 0 and {limits.INT64_MAX} (INT64_MAX)")
            for what, cmp in (("available", p.available), ("held", p.held)):
                if cmp is None:
                    continue
                if cmp.op not in COMPARISONS:
                    self.add(f"{name}.{what}.operator", "must be GT, GE, EQ, LE or LT")
                if not -limits.INT64_MAX <= cmp.value <= limits.INT64_MAX:
                    self.add(
                        f"{name}.{what}.value",
                        f"must be between -{limits.INT64_MAX} and {limits.INT64_MAX} (INT64_MAX)",
                    )

    def overage(self, value: str) -> None:
        if value not in OVERAGE_MODES:
            self.add("overage", "must be REJECT (the default), CAP or DEBT")

    def provenance(self, category: str, unit_cost_micros: int | None, currency: str) -> None:
        """A lot's category and cost basis (docs/design.md, "Provenance and spend order")."""
        if category not in CATEGORIES and not CATEGORY_CUSTOM.fullmatch(category):
            self.add(
                "category",
                f"must be one of {', '.join(CATEGORIES)} or a token x_ then 1-30 chars of [a-z0-9_]",
            )
        if (
            unit_cost_micros is not None
            and not 0 <= unit_cost_micros <= limits.UNIT_COST_MICROS_MAX
        ):
            self.add(
                "unit_cost_micros",
                f"must be between 0 and {limits.UNIT_COST_MICROS_MAX} (UNIT_COST_MICROS_MAX)",
            )
        if unit_cost_micros is not None and not currency:
            self.add("unit_cost_micros", "needs cost_currency, the ISO 4217 code it is counted in")
        elif unit_cost_micros is not None and not _CURRENCY.fullmatch(currency):
            self.add("cost_currency", "must be an ISO 4217 code (3 letters A-Z)")
        elif unit_cost_micros is None and currency:
            self.add("cost_currency", "must be empty without unit_cost_micros")

    def reservation_id(self, name: str, value: str) -> None:
        if not is_uuid(value):
            self.add(name, "must be a reservation id returned by Reserve or Charge (a UUID)")


def is_uuid(value: str) -> bool:
    """True when value is a canonical lower-case UUID (the shape of server-made ids)."""
    return _UUID.fullmatch(value) is not None


OVERAGE_MODES = ("reject", "cap", "debt")  # model.Overage's values

COMPARISONS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "=": lambda a, b: a == b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


@dataclass(frozen=True)
class Comparison:
    """`<the pair's value> op value`, op one of COMPARISONS."""

    op: str
    value: int

    def holds(self, actual: int) -> bool:
        return bool(COMPARISONS[self.op](actual, self.value))

    def __str__(self) -> str:
        return f"{self.op} {self.value}"


@dataclass(frozen=True)
class Precondition:
    """What a mutation expects of one pair it touches, as the pair is when the
    command runs (after rules.catch_up, after earlier commands of its batch).
    Empty account_id and asset: the pair the command touches (a Settle's,
    Release's or Refund's is its reservation's)."""

    account_id: str = ""
    asset: str = ""
    version: int | None = None
    available: Comparison | None = None
    held: Comparison | None = None


@dataclass(frozen=True)
class Command:
    """Base of mutating commands. `caller` scopes the idempotency key; `scope`
    holds the account-id prefixes the caller may touch (None: every account),
    checked by the rules when they load the account or the reservation."""

    caller: str
    idempotency_key: str
    scope: Scope = field(default=None, kw_only=True)

    method = "Command"
    # Fields added after keys were first recorded, with their defaults: left out
    # of the fingerprint when at their default, so that a key recorded before
    # the field existed still matches its retry.
    added_later: ClassVar[dict[str, object]] = {}

    def validate(self) -> None:
        raise NotImplementedError

    def fingerprint(self) -> bytes:
        """Hash of the method and every field but the caller, the key and the scope,
        after defaults are applied (a Reserve without a ttl and one with the default
        ttl are the same request)."""
        cached: bytes | None = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        fields = self._fields()
        if fields.get("ttl_s") == limits.TTL_DEFAULT_S:
            fields["ttl_s"] = None  # the form keys were bound to before defaults were applied
        digest = _digest(self.method, fields)
        object.__setattr__(self, "_fingerprint", digest)  # computed once per command
        return digest

    def matches(self, stored_hash: bytes) -> bool:
        """True when a stored key's request hash is this request's: the hash of
        today, or the one a key stored before defaults were applied carries."""
        return stored_hash == self.fingerprint() or stored_hash == _digest(
            self.method, self._fields()
        )

    def _fields(self) -> dict[str, object]:
        fields = {name: getattr(self, name) for name in _fingerprinted(type(self))}
        # Fields added after keys were first stored count only when set: a retry
        # across the upgrade must still match the hash its key was stored with.
        for name, default in _LATER_FIELDS.items():
            if name in fields and fields[name] == default:
                del fields[name]
        for name, default in self.added_later.items():
            if fields[name] == default:
                del fields[name]
        return fields


# Request fields added after the first release, with the value that leaves them out
# of the fingerprint (a request that does not use them hashes as it always did).
# (Per-command ones: the class's `added_later`.)
_LATER_FIELDS: dict[str, object] = {"preconditions": (), "overage": "reject"}


def _digest(method: str, fields: dict[str, object]) -> bytes:
    canonical = json.dumps([method, fields], sort_keys=True, default=_json_default)
    return hashlib.sha256(canonical.encode()).digest()


_FINGERPRINTED: dict[type, tuple[str, ...]] = {}


def _fingerprinted(cls: type) -> tuple[str, ...]:
    """The fields a command's fingerprint covers, worked out once per class
    (dataclasses.fields() per call was most of a fingerprint's time)."""
    names = _FINGERPRINTED.get(cls)
    if names is None:
        names = _FINGERPRINTED[cls] = tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in ("caller", "idempotency_key", "scope")
        )
    return names


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not serializable: {type(value).__name__}")


@dataclass(frozen=True)
class Grant(Command):
    account_id: str
    asset: str
    amount: int
    metadata: dict[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None
    priority: int = limits.PRIORITY_DEFAULT
    source: str = ""
    preconditions: tuple[Precondition, ...] = ()
    # Provenance and cost basis (docs/design.md, "Provenance and spend order").
    category: str = PAID
    unit_cost_micros: int | None = None
    cost_currency: str = ""
    # The pending top-up request this grant pays for (docs/design.md, "Top-up requests").
    top_up_request_id: str = ""

    method = "Grant"
    # Left out of the fingerprint at these values: keys recorded before the
    # field existed replay instead of conflicting.
    added_later: ClassVar[dict[str, object]] = {
        "category": PAID,
        "unit_cost_micros": None,
        "cost_currency": "",
        "top_up_request_id": "",
    }

    def validate(self) -> None:
        v = Violations()
        v.target(self.account_id, self.asset, self.amount, self.idempotency_key)
        v.metadata("metadata", self.metadata)
        if not limits.PRIORITY_MIN <= self.priority <= limits.PRIORITY_MAX:
            v.add(
                "priority",
                f"must be between {limits.PRIORITY_MIN} and {limits.PRIORITY_MAX} (PRIORITY_MAX)",
            )
        v.text("source", self.source, limits.SOURCE_LEN_MAX, "SOURCE_LEN_MAX")
        v.preconditions(self.preconditions, {(self.account_id, self.asset)}, named=False)
        v.provenance(self.category, self.unit_cost_micros, self.cost_currency)
        if self.top_up_request_id and not is_uuid(self.top_up_request_id):
            v.add(
                "top_up_request_id",
                "must be the request_id of a TOP_UP_REQUESTED event (a UUID), or empty",
            )
        v.raise_if_any()


@dataclass(frozen=True)
class Reserve(Command):
    account_id: str
    asset: str
    amount: int
    ttl_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    preconditions: tuple[Precondition, ...] = ()
    overage: str = "reject"  # model.Overage

    method = "Reserve"

    def validate(self) -> None:
        v = Violations()
        v.target(self.account_id, self.asset, self.amount, self.idempotency_key)
        v.ttl("ttl", self.ttl_s)
        v.metadata("metadata", self.metadata)
        v.preconditions(
            self.preconditions,
            {(self.account_id, self.asset)},
            named=False,
            pooled_asset=self.asset,
        )
        v.overage(self.overage)
        v.raise_if_any()


@dataclass(frozen=True)
class Charge(Command):
    account_id: str
    asset: str
    amount: int
    metadata: dict[str, str] = field(default_factory=dict)
    preconditions: tuple[Precondition, ...] = ()
    overage: str = "reject"  # model.Overage

    method = "Charge"

    def validate(self) -> None:
        v = Violations()
        v.target(self.account_id, self.asset, self.amount, self.idempotency_key)
        v.metadata("metadata", self.metadata)
        v.preconditions(
            self.preconditions,
            {(self.account_id, self.asset)},
            named=False,
            pooled_asset=self.asset,
        )
        v.overage(self.overage)
        v.raise_if_any()


@dataclass(frozen=True)
class Leg:
    account_id: str
    asset: str
    amount: int
    leg_key: str


@dataclass(frozen=True)
class ReserveGroup(Command):
    legs: tuple[Leg, ...]
    ttl_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    preconditions: tuple[Precondition, ...] = ()
    # How every leg takes (rules._leg_take); "reject" is left out of the
    # fingerprint (_LATER_FIELDS), so keys stored before the field replay.
    overage: str = "reject"  # model.Overage

    method = "ReserveGroup"

    def validate(self) -> None:
        v = Violations()
        if not 1 <= len(self.legs) <= limits.GROUP_LEGS_MAX:
            v.add("legs", f"must have 1 to {limits.GROUP_LEGS_MAX} legs (GROUP_LEGS_MAX)")
        seen: set[str] = set()
        for i, leg in enumerate(self.legs[: limits.GROUP_LEGS_MAX]):
            v.account_id(f"legs[{i}].account_id", leg.account_id)
            v.asset(f"legs[{i}].asset", leg.asset)
            v.amount(f"legs[{i}].amount", leg.amount)
            v.printable(
                f"legs[{i}].leg_key", leg.leg_key, limits.LEG_KEY_LEN_MAX, "LEG_KEY_LEN_MAX"
            )
            if leg.leg_key in seen:
                v.add(f"legs[{i}].leg_key", "must be unique within the group")
            seen.add(leg.leg_key)
        v.idempotency_key(self.idempotency_key)
        v.ttl("ttl", self.ttl_s)
        v.metadata("metadata", self.metadata)
        v.preconditions(
            self.preconditions, {(leg.account_id, leg.asset) for leg in self.legs}, named=True
        )
        v.overage(self.overage)
        v.raise_if_any()


@dataclass(frozen=True)
class Settle(Command):
    reservation_id: str
    amount: int
    final: bool = False
    preconditions: tuple[Precondition, ...] = ()

    method = "Settle"

    def validate(self) -> None:
        v = Violations()
        v.reservation_id("reservation_id", self.reservation_id)
        if self.amount == 0 and not self.final:
            v.add("amount", "must be > 0 unless final is set")
        else:
            v.amount("amount", self.amount, allow_zero=True)
        v.idempotency_key(self.idempotency_key)
        v.preconditions(self.preconditions, None, named=False)
        v.raise_if_any()


@dataclass(frozen=True)
class Release(Command):
    reservation_id: str
    amount: int = 0  # 0 = all that remains
    preconditions: tuple[Precondition, ...] = ()

    method = "Release"

    def validate(self) -> None:
        v = Violations()
        v.reservation_id("reservation_id", self.reservation_id)
        v.amount("amount", self.amount, allow_zero=True)
        v.idempotency_key(self.idempotency_key)
        v.preconditions(self.preconditions, None, named=False)
        v.raise_if_any()


@dataclass(frozen=True)
class Refund(Command):
    reservation_id: str
    amount: int
    reason: str = ""
    preconditions: tuple[Precondition, ...] = ()

    method = "Refund"

    def validate(self) -> None:
        v = Violations()
        v.reservation_id("reservation_id", self.reservation_id)
        v.amount("amount", self.amount)
        v.idempotency_key(self.idempotency_key)
        v.text("reason", self.reason, limits.REASON_LEN_MAX, "REASON_LEN_MAX")
        v.preconditions(self.preconditions, None, named=False)
        v.raise_if_any()


@dataclass(frozen=True)
class SetSpendingLimits(Command):
    """Admin: the pair's floor (<= 0; how far below zero DEBT-mode spends may go)."""

    account_id: str
    asset: str
    floor: int
    preconditions: tuple[Precondition, ...] = ()

    method = "SetSpendingLimits"

    def validate(self) -> None:
        v = Violations()
        v.account_id("account_id", self.account_id)
        v.asset("asset", self.asset)
        if not limits.FLOOR_MIN <= self.floor <= 0:
            v.add("floor", f"must be between {limits.FLOOR_MIN} (FLOOR_MIN, -AMOUNT_MAX) and 0")
        v.idempotency_key(self.idempotency_key)
        v.preconditions(self.preconditions, {(self.account_id, self.asset)}, named=False)
        v.raise_if_any()


CAP_WINDOWS = ("day", "month", "lifetime")  # model.CapWindow's values


@dataclass(frozen=True)
class SetMemberCap(Command):
    """Admin: cap what the account may spend of the asset per window (whoever's
    lots fund it), checked against settled-in-window + held; None removes it."""

    account_id: str
    asset: str
    window: str
    cap: int | None
    preconditions: tuple[Precondition, ...] = ()

    method = "SetMemberCap"

    def validate(self) -> None:
        v = Violations()
        v.account_id("account_id", self.account_id)
        v.asset("asset", self.asset)
        if self.window not in CAP_WINDOWS:
            v.add("window", "must be CAP_WINDOW_DAY, CAP_WINDOW_MONTH or CAP_WINDOW_LIFETIME")
        if self.cap is not None:
            v.amount("cap", self.cap, allow_zero=True)
        v.idempotency_key(self.idempotency_key)
        v.preconditions(self.preconditions, {(self.account_id, self.asset)}, named=False)
        v.raise_if_any()


@dataclass(frozen=True)
class VoidGrant(Command):
    """Take back unspent credits of one lot (0: all its unspent remainder)."""

    lot_id: str
    amount: int = 0
    reason: str = ""

    method = "VoidGrant"

    def validate(self) -> None:
        v = Violations()
        if not is_uuid(self.lot_id):
            v.add("lot_id", "must be a lot id returned by Grant (a UUID)")
        v.amount("amount", self.amount, allow_zero=True)
        v.text("reason", self.reason, limits.REASON_LEN_MAX, "REASON_LEN_MAX")
        v.idempotency_key(self.idempotency_key)
        v.raise_if_any()


@dataclass(frozen=True)
class CreateGrantSchedule(Command):
    """A grant that renews itself every period (ledger/domain/schedules.py)."""

    account_id: str
    asset: str
    amount: int
    unit: str  # month, week, day, fixed (count seconds)
    count: int
    anchor: datetime | None = None  # None: now
    time_zone: str = "UTC"
    ends_at: datetime | None = None
    priority: int = limits.PRIORITY_DEFAULT
    category: str = ALLOWANCE
    lot_life_s: int | None = None
    rollover: Rollover | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    method = "CreateGrantSchedule"

    def validate(self) -> None:
        v = Violations()
        v.target(self.account_id, self.asset, self.amount, self.idempotency_key)
        unit = next((u for u in Unit if u.value == self.unit), None)
        if unit is None:
            v.add("period_unit", "must be MONTH, WEEK, DAY or FIXED")
        elif not COUNT_MIN[unit] <= self.count <= COUNT_MAX[unit]:
            v.add(
                "period_count",
                f"must be {COUNT_MIN[unit]} to {COUNT_MAX[unit]} for {unit.value}"
                + (" (seconds)" if unit is Unit.FIXED else ""),
            )
            if unit is Unit.FIXED:  # the count of a fixed period is seconds: say which unit
                v.add("period_unit", "FIXED counts seconds: period_count must be at least 60")
        try:
            zone(self.time_zone)
        except ValueError as exc:
            v.add("time_zone", f"{exc}: must be an IANA time zone such as Europe/Paris")
        if self.ends_at is not None and self.anchor is not None and self.ends_at <= self.anchor:
            v.add("end", "must be after anchor")
        if not limits.PRIORITY_MIN <= self.priority <= limits.PRIORITY_MAX:
            v.add("priority", f"must be between {limits.PRIORITY_MIN} and {limits.PRIORITY_MAX}")
        v.provenance(self.category, None, "")
        if self.category in (ROLLOVER, REFUND):
            v.add("category", "a schedule's lots cannot be rollover or refund lots")
        longest = (
            longest_period_s(unit, self.count) * limits.SCHEDULE_LOT_LIFE_PERIODS_MAX
            if unit is not None and COUNT_MIN[unit] <= self.count <= COUNT_MAX[unit]
            else limits.SCHEDULE_LOT_LIFE_S_MAX
        )
        if self.lot_life_s is not None and not 1 <= self.lot_life_s <= longest:
            v.add(
                "lot_life",
                f"must be 1 s to {longest} s"
                f" ({limits.SCHEDULE_LOT_LIFE_PERIODS_MAX} periods, SCHEDULE_LOT_LIFE_PERIODS_MAX)",
            )
        if self.rollover is not None:
            _rollover(v, self.rollover, longest)
        v.metadata("metadata", self.metadata)
        v.raise_if_any()


@dataclass(frozen=True)
class UpdateGrantSchedule(Command):
    """New terms from the next period on (None: unchanged); never an issued period."""

    schedule_id: str
    amount: int | None = None
    rollover: Rollover | None = None
    remove_rollover: bool = False

    method = "UpdateGrantSchedule"

    def validate(self) -> None:
        v = Violations()
        if not is_uuid(self.schedule_id):
            v.add("schedule_id", "must be a schedule id returned by CreateGrantSchedule (a UUID)")
        if self.amount is not None:
            v.amount("amount", self.amount)
        if self.rollover is not None:
            _rollover(v, self.rollover)
            if self.remove_rollover:
                v.add("remove_rollover", "must not be set with rollover")
        if self.amount is None and self.rollover is None and not self.remove_rollover:
            v.add("amount", "set amount, rollover or remove_rollover: nothing to change")
        v.idempotency_key(self.idempotency_key)
        v.raise_if_any()


def _rollover(v: Violations, r: Rollover, life_s_max: int = limits.SCHEDULE_LOT_LIFE_S_MAX) -> None:
    if r.cap_amount is not None:
        v.amount("rollover.cap_amount", r.cap_amount, allow_zero=True)
    if r.cap_percent is not None and not 0 <= r.cap_percent <= 100:
        v.add("rollover.cap_percent", "must be between 0 and 100")
    if r.life_s is not None and not 1 <= r.life_s <= life_s_max:
        v.add(
            "rollover.life",
            f"must be 1 s to {life_s_max} s"
            f" ({limits.SCHEDULE_LOT_LIFE_PERIODS_MAX} periods, SCHEDULE_LOT_LIFE_PERIODS_MAX)",
        )
    if not limits.PRIORITY_MIN <= r.priority <= limits.PRIORITY_MAX:
        v.add(
            "rollover.priority",
            f"must be between {limits.PRIORITY_MIN} and {limits.PRIORITY_MAX}",
        )


@dataclass(frozen=True)
class CancelGrantSchedule(Command):
    """No further periods; `void_remainder` also voids the current period's
    unheld remainder."""

    schedule_id: str
    void_remainder: bool = False

    method = "CancelGrantSchedule"

    def validate(self) -> None:
        v = Violations()
        if not is_uuid(self.schedule_id):
            v.add("schedule_id", "must be a schedule id returned by CreateGrantSchedule (a UUID)")
        v.idempotency_key(self.idempotency_key)
        v.raise_if_any()


@dataclass(frozen=True)
class ExpireDue:
    """Internal (sweeper): make durable what is due among these reservations and
    (account, asset) pairs. No caller and no key: never recorded, never replayed."""

    reservation_ids: tuple[str, ...] = ()
    lot_pairs: tuple[tuple[str, str], ...] = ()

    method: ClassVar[str] = "ExpireDue"

    def validate(self) -> None:
        return None


BatchCommand = Grant | Reserve | Charge | Settle | Release | Refund
"""The commands SubmitBatch takes (ReserveGroup is a batch of its own)."""


@dataclass(frozen=True)
class Batch(Command):
    """SubmitBatch: up to BATCH_COMMANDS_MAX commands, run in order, each with its
    own idempotency key and its own outcome. The batch itself has no key (its
    `idempotency_key` is empty): replays are per command. `atomic`: one
    transaction, all or nothing; a failed atomic batch records nothing.

    One command object, so that whatever carries a command to the writer
    carries a batch unchanged."""

    commands: tuple[BatchCommand, ...] = ()
    atomic: bool = False

    method = "SubmitBatch"

    def validate(self) -> None:
        """Only the batch's own limits: each command is validated on its own."""
        if not 1 <= len(self.commands) <= limits.BATCH_COMMANDS_MAX:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "commands",
                        f"must have 1 to {limits.BATCH_COMMANDS_MAX} commands (BATCH_COMMANDS_MAX)",
                    )
                ]
            )


# What callers send: keyed by (caller, idempotency_key), recorded, replayed.
KeyedCommand = (
    Grant
    | Reserve
    | Charge
    | ReserveGroup
    | Settle
    | Release
    | Refund
    | SetSpendingLimits
    | SetMemberCap
    | VoidGrant
    | CreateGrantSchedule
    | UpdateGrantSchedule
    | CancelGrantSchedule
)
# A Batch is unkeyed itself: its commands are keyed, each on its own.
MutatingCommand = KeyedCommand | ExpireDue | Batch
