"""Bearer tokens: made at random, stored only as SHA-256 hashes.

A token is 256 bits from the OS's CSPRNG, so a plain (unsalted, fast) hash is
enough: there is nothing to brute-force that is smaller than the token itself.
"""

from __future__ import annotations

import hashlib
import secrets

#: Every token this tool makes starts with it, so that secret scanners and
#: people recognise one in a paste, a log or a commit.
PREFIX = "clt_"
TOKEN_BYTES = 32
#: Longer `authorization` values are refused before hashing.
TOKEN_LEN_MAX = 512


def new_token() -> str:
    """A fresh random bearer token."""
    return PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    """The SHA-256 digest a caller file stores (as hex) for `token`."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_hash_hex(token: str) -> str:
    return token_hash(token).hex()
