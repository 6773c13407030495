"""Page tokens (AIP-158): opaque to callers, bounded in length, bound to their query.

A token carries where the next page starts (the cursor: a few non-negative
int64s or short strings of id characters, such as the last entry id shown, or a
timestamp in microseconds and a reservation id) and a short hash of the query that
made it (the RPC's name and the query's fields, such as account_id and
asset), never the query itself: its length then depends on the cursor alone,
so the server always accepts back a token it made, however long the query's
ids are (issue 13: a 128-char account id with a 64-char asset used to give a
292-char token that the 256-char limit refused).

Decoding trusts nothing: any token that is not exactly one this module made
for the same query (malformed base64, JSON, types; floats, bools, negative or
out-of-int64 numbers; another query's hash) is InvalidArgument naming the
field, never an exception that would answer INTERNAL. The caller still
checks what each part must be (an id > 0, a UUID) and refuses it with
InvalidArgument too: a caller can forge any cursor of its own query.

Usage, for a query (rpc, parts) whose cursor has `size` parts:
    token = encode("ListEntries", (account_id, asset), (last_entry_id,))
    cursor = decode(token, "ListEntries", (account_id, asset), 1, "page_token")  # None: first page
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence

from ledger.domain import errors, limits
from ledger.domain.errors import FieldViolation

_VERSION = 1
_QUERY_HASH_BYTES = 12  # 96 bits: telling queries apart, not a secret
# A cursor part is an int of at most 19 digits or a string of at most 40 chars:
# with the version and the hash, a 3-part cursor's token is at most ~210 chars,
# under PAGE_TOKEN_LEN_MAX whatever the query.
CURSOR_PARTS_MAX = 3
CURSOR_TEXT_LEN_MAX = 40
# Ids' characters, none of which JSON escapes (so the bound above holds).
_TEXT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-")

Cursor = tuple[int | str, ...]


def query_hash(rpc: str, parts: Sequence[str]) -> str:
    """The hash a token carries of its query (urlsafe base64, unpadded)."""
    canonical = json.dumps([rpc, *parts], separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode()).digest()[:_QUERY_HASH_BYTES]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def encode(rpc: str, parts: Sequence[str], cursor: Sequence[int | str]) -> str:
    """The token that resumes query (rpc, parts) at `cursor`.

    Errors: InvariantViolation when the cursor is not 1 to CURSOR_PARTS_MAX ints in
    0..INT64_MAX or strings of 1 to CURSOR_TEXT_LEN_MAX chars of [A-Za-z0-9._:@-] (a
    UUID, an account id's first 40 chars; a bug in the caller: cursors come from rows).
    """
    if not 1 <= len(cursor) <= CURSOR_PARTS_MAX or not all(_is_position(v) for v in cursor):
        raise errors.InvariantViolation(f"not a page cursor: {cursor!r}")
    raw = json.dumps([_VERSION, query_hash(rpc, parts), *cursor], separators=(",", ":"))
    token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    if len(token) > limits.PAGE_TOKEN_LEN_MAX:  # cannot happen with the bounds above
        raise errors.InvariantViolation(f"a page token of {len(token)} chars")
    return token


def decode(
    token: str, rpc: str, parts: Sequence[str], size: int, field: str = "page_token"
) -> Cursor | None:
    """The cursor of a token made by encode(rpc, parts, ...) with `size` parts; None for "".

    Errors: InvalidArgument naming `field` for anything else.
    """
    if not token:
        return None
    bad = errors.InvalidArgument(
        [
            FieldViolation(
                field,
                f"is not a next_page_token returned by {rpc} for this query"
                f" (at most {limits.PAGE_TOKEN_LEN_MAX} chars, PAGE_TOKEN_LEN_MAX)",
            )
        ]
    )
    if len(token) > limits.PAGE_TOKEN_LEN_MAX or not token.isascii():
        raise bad
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        data = json.loads(raw.decode("ascii"))
    except (ValueError, binascii.Error, UnicodeError, RecursionError) as exc:
        raise bad from exc
    if (
        not isinstance(data, list)
        or len(data) != 2 + size
        or type(data[0]) is not int
        or data[0] != _VERSION
        or data[1] != query_hash(rpc, parts)
    ):
        raise bad
    cursor = tuple(data[2:])
    if not all(_is_position(v) for v in cursor) or encode(rpc, parts, cursor) != token:
        raise bad  # the second test: only the exact bytes encode() makes are a token
    return cursor


def _is_position(value: object) -> bool:
    # type() rather than isinstance(): True and False are ints too.
    if type(value) is int:
        return 0 <= value <= limits.INT64_MAX
    if type(value) is str:
        return 1 <= len(value) <= CURSOR_TEXT_LEN_MAX and _TEXT_CHARS.issuperset(value)
    return False
