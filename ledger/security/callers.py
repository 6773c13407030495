"""The caller file: who may call, with which credentials, on which accounts.

TOML (stdlib tomllib), documented in docs/security.md:

    [defaults]                      # optional
    rate_per_s = 500                # weight units a second per caller (default 1000); 0 = no limit
    burst = 1000                    # bucket size; default: one second's worth

    [[caller]]
    id = "billing"                  # scopes idempotency keys; shown in logs
    permissions = ["read", "spend"] # read, spend, refund, grant, admin
    account_prefixes = ["tenant-42:"]   # "*" = every account
    token_sha256 = ["<64 hex>"]     # from `ledger token new` / `ledger token hash`
    cert_identities = ["uri:spiffe://prod/billing"]   # typed: uri:, dns:, email:, cn:
    rate_per_s = 100                # optional, overrides [defaults]
    burst = 200

Error messages name the place of a bad value (caller[2].token_sha256[0]) but
never repeat the value: a plaintext token pasted where a hash belongs must not
end up in a log.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.domain.access import EVERY_ACCOUNT, Access, Permission
from ledger.security.ratelimit import DEFAULT_BURST, DEFAULT_RATE_PER_S, Rate
from ledger.security.tokens import TOKEN_LEN_MAX, token_hash

FILE_BYTES_MAX = 1024 * 1024
CALLERS_MAX = 10_000
CREDENTIALS_PER_CALLER_MAX = 16
PREFIXES_PER_CALLER_MAX = 256
IDENTITY_LEN_MAX = 512
RATE_PER_S_MAX = 1_000_000.0

_CALLER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")

_TOP_KEYS = {"defaults", "caller"}
_DEFAULT_KEYS = {"rate_per_s", "burst"}
_CALLER_KEYS = {
    "id",
    "permissions",
    "account_prefixes",
    "token_sha256",
    "cert_identities",
    "rate_per_s",
    "burst",
}
_PERMISSIONS = {p.value: p for p in Permission}

#: The types of certificate identity, each matched only against the same type
#: in the client certificate: `uri:` and `dns:` and `email:` SAN entries,
#: `cn:` the subject's common name (only of a certificate without SAN).
IDENTITY_TYPES = ("uri", "dns", "email", "cn")


def typed_identity(kind: str, value: str) -> str:
    """The form a caller file and the interceptor compare: "kind:value", with DNS
    names lower-cased (they are case-insensitive)."""
    return f"{kind}:{value.lower() if kind == 'dns' else value}"


class CallerFileError(ValueError):
    """The caller file is unreadable or invalid; the message says where, never a value."""


@dataclass(frozen=True, slots=True)
class Caller:
    access: Access
    token_hashes: tuple[bytes, ...]
    cert_identities: tuple[str, ...]
    rate: Rate

    @property
    def id(self) -> str:
        return self.access.caller


class CallerBook:
    """The parsed caller file: look callers up by token or certificate identity."""

    def __init__(self, callers: Sequence[Caller]) -> None:
        self.callers = tuple(callers)
        self._tokens = {h: c for c in self.callers for h in c.token_hashes}
        self._identities = {i: c for c in self.callers for i in c.cert_identities}

    def by_token(self, token: str) -> Caller | None:
        """The caller holding `token`: one SHA-256 and one dict lookup of the digest,
        whatever the number of callers.

        The lookup's timing can only tell about the digest, never the token:
        learning digest bits does not help find a 256-bit token (SHA-256 is
        preimage resistant), so no constant-time compare is needed.
        """
        if not token or len(token) > TOKEN_LEN_MAX:
            return None
        return self._tokens.get(token_hash(token))

    def by_identities(self, identities: Iterable[str]) -> Caller | None:
        """The caller a client certificate names; None when none or several do."""
        matches = {id(c): c for i in identities if (c := self._identities.get(i)) is not None}
        if len(matches) != 1:
            return None
        return next(iter(matches.values()))


def load(path: Path) -> CallerBook:
    """Read and check a caller file. Errors: CallerFileError."""
    try:
        with path.open("rb") as f:
            raw = f.read(FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise CallerFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > FILE_BYTES_MAX:
        raise CallerFileError(f"{path}: larger than {FILE_BYTES_MAX} bytes (FILE_BYTES_MAX)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CallerFileError(f"{path}: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give line and column, not the offending text.
        hint = " (the caller file is TOML, see docs/security.md)"
        raise CallerFileError(f"{path}: not valid TOML: {exc}{hint}") from None
    try:
        return parse(data)
    except CallerFileError as exc:
        raise CallerFileError(f"{path}: {exc}") from None


def parse(data: dict[str, Any]) -> CallerBook:
    """Check a decoded caller file. Errors: CallerFileError."""
    _no_unknown_keys("the file", data, _TOP_KEYS)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise CallerFileError("[defaults] must be a table")
    _no_unknown_keys("[defaults]", defaults, _DEFAULT_KEYS)
    default_rate = _rate("[defaults]", defaults, Rate(DEFAULT_RATE_PER_S, DEFAULT_BURST))
    entries = data.get("caller", [])
    if not isinstance(entries, list) or not entries:
        raise CallerFileError("needs at least one [[caller]] table")
    if len(entries) > CALLERS_MAX:
        raise CallerFileError(f"more than {CALLERS_MAX} callers (CALLERS_MAX)")
    callers = [_caller(f"caller[{i}]", e, default_rate) for i, e in enumerate(entries)]
    _unique(callers)
    return CallerBook(callers)


def _caller(where: str, entry: object, default_rate: Rate) -> Caller:
    if not isinstance(entry, dict):
        raise CallerFileError(f"{where} must be a table")
    caller_id = entry.get("id")
    if not isinstance(caller_id, str) or not _CALLER_ID.fullmatch(caller_id):
        raise CallerFileError(f"{where}.id must be 1-64 chars of [A-Za-z0-9._:@-]")
    where = f"{where} ({caller_id})"
    _no_unknown_keys(where, entry, _CALLER_KEYS)
    permissions = frozenset(
        _PERMISSIONS[p] if p in _PERMISSIONS else _bad_permission(where)
        for p in _strings(where, entry, "permissions", required=True, max_items=len(Permission))
    )
    prefixes = _strings(
        where, entry, "account_prefixes", required=True, max_items=PREFIXES_PER_CALLER_MAX
    )
    for j, prefix in enumerate(prefixes):
        if prefix != EVERY_ACCOUNT and not _PREFIX.fullmatch(prefix):
            raise CallerFileError(
                f'{where}.account_prefixes[{j}] must be "*" or 1-128 chars of [A-Za-z0-9._:@-]'
            )
    hashes = _strings(where, entry, "token_sha256", max_items=CREDENTIALS_PER_CALLER_MAX)
    for j, h in enumerate(hashes):
        if not _HEX_SHA256.fullmatch(h):
            raise CallerFileError(
                f"{where}.token_sha256[{j}] must be 64 hex chars, the SHA-256 of a token"
                " (`ledger token hash`), never the token itself"
            )
    identities = [
        _identity(f"{where}.cert_identities[{j}]", ident)
        for j, ident in enumerate(
            _strings(where, entry, "cert_identities", max_items=CREDENTIALS_PER_CALLER_MAX)
        )
    ]
    if not hashes and not identities:
        raise CallerFileError(f"{where} needs token_sha256 or cert_identities (or both)")
    scope = None if EVERY_ACCOUNT in prefixes else tuple(dict.fromkeys(prefixes))
    return Caller(
        Access(caller_id, permissions, scope),
        tuple(bytes.fromhex(h) for h in hashes),
        tuple(identities),
        _rate(where, entry, default_rate),
    )


def _identity(where: str, ident: str) -> str:
    if len(ident) > IDENTITY_LEN_MAX or not _PRINTABLE.fullmatch(ident):
        raise CallerFileError(f"{where} must be 1-{IDENTITY_LEN_MAX} printable ASCII chars")
    kind, sep, value = ident.partition(":")
    if not sep or kind not in IDENTITY_TYPES or not value:
        # Say where, and which forms are accepted; the value itself stays out.
        raise CallerFileError(
            f"{where} has no identity type: write it as uri:<SAN URI, e.g. spiffe://...>,"
            " dns:<SAN DNS name>, email:<SAN email> or cn:<subject CN, certificates without"
            " SAN only>, so that one type can never match another"
        )
    return typed_identity(kind, value)


def _bad_permission(where: str) -> Permission:
    names = ", ".join(_PERMISSIONS)
    raise CallerFileError(f"{where}.permissions: each must be one of {names}")


def _strings(
    where: str, entry: dict[str, Any], key: str, *, required: bool = False, max_items: int
) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CallerFileError(f"{where}.{key} must be a list of strings")
    if required and not value:
        raise CallerFileError(f"{where}.{key} must not be empty")
    if len(value) > max_items:
        raise CallerFileError(f"{where}.{key} has more than {max_items} entries")
    return value


def _rate(where: str, table: dict[str, Any], default: Rate) -> Rate:
    per_s = table.get("rate_per_s", default.per_s)
    if (
        isinstance(per_s, bool)
        or not isinstance(per_s, int | float)
        or not 0 <= per_s <= RATE_PER_S_MAX
    ):
        raise CallerFileError(f"{where}.rate_per_s must be a number from 0 to {RATE_PER_S_MAX:.0f}")
    if "burst" in table:
        burst = table["burst"]
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 10**9:
            raise CallerFileError(f"{where}.burst must be a whole number from 1 to 10^9")
    elif "rate_per_s" in table or default.burst == 0:
        burst = max(1, math.ceil(per_s))  # one second's worth
    else:
        burst = default.burst
    return Rate(float(per_s), burst if per_s else 0)


def _no_unknown_keys(where: str, table: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise CallerFileError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def _unique(callers: list[Caller]) -> None:
    ids: set[str] = set()
    hashes: set[bytes] = set()
    identities: set[str] = set()
    for c in callers:
        if c.id in ids:
            raise CallerFileError(f"caller id {c.id!r} appears twice")
        ids.add(c.id)
        for h in c.token_hashes:
            if h in hashes:
                raise CallerFileError(f"caller {c.id}: a token hash is listed twice")
            hashes.add(h)
        for i in c.cert_identities:
            if i in identities:
                raise CallerFileError(f"caller {c.id}: certificate identity {i!r} is listed twice")
            identities.add(i)
