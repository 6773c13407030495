"""The pieces on their own: caller file rules, token lookup, rate buckets,
access decisions and the loopback test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger.config import Config, is_loopback
from ledger.domain import errors
from ledger.domain.access import LOCAL, NEEDED, Access, Permission
from ledger.security import callers
from ledger.security.callers import CallerFileError
from ledger.security.ratelimit import Rate, RateLimiter
from ledger.security.tokens import new_token, token_hash_hex

pytestmark = pytest.mark.timeout(30)

TOKEN = new_token()


def _entry(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "svc",
        "permissions": ["read"],
        "account_prefixes": ["t1:"],
        "token_sha256": [token_hash_hex(TOKEN)],
    }
    base.update(kw)
    return base


def test_a_valid_file_gives_access_and_rate() -> None:
    book = callers.parse(
        {
            "defaults": {"rate_per_s": 10},
            "caller": [
                _entry(),
                _entry(
                    id="ops",
                    permissions=["admin"],
                    account_prefixes=["*"],
                    token_sha256=[],
                    cert_identities=["uri:spiffe://x/ops"],
                    rate_per_s=0,
                ),
            ],
        }
    )
    svc, ops = book.callers
    assert svc.access == Access("svc", frozenset({Permission.READ}), ("t1:",))
    assert svc.rate == Rate(10.0, 10)
    assert ops.access.scope is None and not ops.rate.limited
    assert book.by_token(TOKEN) is svc
    assert book.by_token(TOKEN + "x") is None
    assert book.by_token("") is None
    assert book.by_identities(["dns:dns.example", "uri:spiffe://x/ops"]) is ops
    assert book.by_identities(["nobody"]) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "has space"}, "caller[0].id must be"),
        ({"permissions": ["read", "root"]}, "permissions: each must be one of"),
        ({"permissions": []}, "permissions must not be empty"),
        ({"account_prefixes": []}, "account_prefixes must not be empty"),
        ({"account_prefixes": ["t*"]}, 'account_prefixes[0] must be "*"'),
        ({"token_sha256": [TOKEN]}, "token_sha256[0] must be 64 hex chars"),
        ({"token_sha256": []}, "needs token_sha256 or cert_identities"),
        ({"cert_identities": ["has space"]}, "cert_identities[0] must be"),
        ({"cert_identities": ["spiffe://x/ops"]}, "cert_identities[0] has no identity type"),
        ({"cert_identities": ["uri:a", "billing"]}, "cert_identities[1] has no identity type"),
        ({"cert_identities": ["san:billing"]}, "cert_identities[0] has no identity type"),
        ({"rate_per_s": -1}, "rate_per_s must be a number"),
        ({"rate_per_s": True}, "rate_per_s must be a number"),
        ({"burst": 0}, "burst must be a whole number"),
        ({"permission": ["read"]}, "unknown key(s) permission"),
    ],
)
def test_bad_entries_are_named_but_never_repeated(change: dict[str, Any], message: str) -> None:
    with pytest.raises(CallerFileError) as info:
        callers.parse({"caller": [_entry(**change)]})
    assert message in str(info.value)
    assert TOKEN not in str(info.value)


def test_duplicates_are_refused() -> None:
    with pytest.raises(CallerFileError, match="appears twice"):
        callers.parse({"caller": [_entry(), _entry(token_sha256=[token_hash_hex("b")])]})
    with pytest.raises(CallerFileError, match="token hash is listed twice"):
        callers.parse({"caller": [_entry(), _entry(id="other")]})
    with pytest.raises(CallerFileError, match="at least one"):
        callers.parse({})


def test_load_reports_toml_errors_by_place(tmp_path: Path) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text(f"caller:\n  - id: svc\n    token: {TOKEN}\n")
    with pytest.raises(CallerFileError) as info:
        callers.load(path)
    assert "not valid TOML" in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(CallerFileError, match="cannot read"):
        callers.load(tmp_path / "missing.toml")


def test_rate_limiter_refills_and_forgets() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    rate = Rate(2.0, 2)
    assert limiter.take("a", rate) == 0 and limiter.take("a", rate) == 0
    assert limiter.take("a", rate) == pytest.approx(0.5)
    assert limiter.take("b", rate) == 0  # another caller's bucket is its own
    now[0] = 0.5
    assert limiter.take("a", rate) == 0
    assert limiter.take("a", Rate()) == 0  # unlimited
    limiter.forget_except({"b"})
    assert limiter.take("a", rate) == 0  # a fresh bucket


def test_access_decisions() -> None:
    reader = Access("r", frozenset({Permission.READ}), ("t1:",))
    assert reader.may("GetAccount") and not reader.may("Reserve")
    assert reader.covers("t1:x") and not reader.covers("t2:x") and not reader.covers("t1")
    with pytest.raises(errors.PermissionDenied) as info:
        reader.require("Refund")
    assert info.value.metadata == {"method": "Refund", "permission": "refund"}
    assert all(LOCAL.may(m) for m in NEEDED)
    scoped_admin = Access("a", frozenset({Permission.ADMIN}), ("t1:",))
    assert all(scoped_admin.may(m) for m in NEEDED) and not scoped_admin.covers("t2:x")


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.3.4.5:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        (":1", False),
        ("10.0.0.1:1", False),
        ("ledger.local:1", False),
    ],
)
def test_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback
    assert bool(Config(listen=listen).problems()) is not loopback
    anonymous = Config(listen=listen, insecure=True).problems()
    assert bool(anonymous) is not loopback
    assert all("without a caller file" in p for p in anonymous)
    assert not Config(listen=listen, insecure=True, allow_anonymous_full_access=True).problems()
    assert not Config(listen=listen, insecure=True, callers_file=Path("c.toml")).problems()


def test_callers_check_prints_each_caller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ledger.cli import main

    path = tmp_path / "callers.toml"
    path.write_text(
        '[[caller]]\nid = "svc"\npermissions = ["spend", "read"]\naccount_prefixes = ["t1:"]\n'
        f'token_sha256 = ["{token_hash_hex(TOKEN)}", "{token_hash_hex("b")}"]\nrate_per_s = 50\n'
    )
    assert main(["callers", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "svc: read,spend on t1:; 2 token(s), 0 certificate identity(ies); 50/s burst 50" in out
    assert token_hash_hex(TOKEN) not in out
    path.write_text("[[caller]]\nid = 'svc'\n")
    assert main(["callers", "check", str(path)]) == 1
    assert "permissions must not be empty" in capsys.readouterr().err
