"""One list of error reasons: the proto's ErrorReason enum, and every other list tested against it.

The reasons a caller can meet are written in six places: the server's error
classes, the two clients' error classes, the operator CLI's hints, the
README's error table and tests/client/test_errors.py's table. The proto enum
`creditledger.v1.ErrorReason` is the source; this module fails, naming the
list and the reason, as soon as any of the others drifts from it, and checks
that each place agrees with the server on the gRPC code of every reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from creditledger.v1 import ledger_pb2 as pb
from creditledger_client import errors as client_errors

from ledger.domain import errors as server_errors
from ledger.operator import hints
from ledger.transport.status import CODE_OF
from tests.client.test_errors import CONTRACT

REPO = Path(__file__).resolve().parents[2]
PREFIX = "ERROR_REASON_"


def proto_reasons() -> set[str]:
    """The wire strings of the enum: its value names without the prefix, UNSPECIFIED left out."""
    names = set(pb.ErrorReason.keys())
    assert all(name.startswith(PREFIX) for name in names), names
    return {name.removeprefix(PREFIX) for name in names} - {"UNSPECIFIED"}


def server_codes() -> dict[str, grpc.StatusCode]:
    """reason -> gRPC code of every LedgerError the server can raise (the base is INTERNAL)."""
    found: dict[str, grpc.StatusCode] = {}
    pending: list[type[server_errors.LedgerError]] = [server_errors.LedgerError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        code = CODE_OF[cls.kind]
        assert found.setdefault(cls.reason, code) == code, f"{cls.reason}: two codes"
    return found


def readme_table() -> dict[str, str]:
    """reason -> code name, from the rows of the README's `## Errors` table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([A-Z_]+) \| ([A-Z_]+) \|", section, flags=re.MULTILINE)
    assert rows, "no rows found in the README's error table"
    table = {reason: code for code, reason in rows}
    assert len(table) == len(rows), "a reason appears twice in the README's table"
    return table


def typescript_classes() -> dict[str, str]:
    """reason -> class name, from the TypeScript client's CLASS_BY_REASON map (read as text,
    so this runs without Node.js; the TypeScript unit tests check it against the generated enum)."""
    text = (REPO / "clients" / "typescript" / "src" / "errors.ts").read_text(encoding="utf-8")
    body = text.split("const CLASS_BY_REASON", 1)[1].split("]);", 1)[0]
    pairs = re.findall(r'\[\s*"([A-Z_]+)",\s*(\w+)\s*\]', body)
    assert pairs, "CLASS_BY_REASON not found in errors.ts"
    return dict(pairs)


def test_the_proto_enum_is_well_formed() -> None:
    assert pb.ErrorReason.Value(PREFIX + "UNSPECIFIED") == 0
    for reason in proto_reasons():
        assert re.fullmatch(r"[A-Z][A-Z_]*[A-Z]", reason), reason


def test_server_sends_exactly_the_proto_reasons() -> None:
    assert set(server_codes()) == proto_reasons()


def test_recordable_reasons_are_server_reasons() -> None:
    assert set(server_errors.RECORDABLE) <= proto_reasons()


def test_python_client_has_a_class_per_reason_in_the_servers_code_family() -> None:
    assert proto_reasons() == client_errors.KNOWN_REASONS
    by_code = client_errors._BY_CODE
    for reason, code in server_codes().items():
        cls = client_errors._BY_REASON[reason]
        family = by_code[code]
        assert issubclass(cls, family), f"{reason}: {cls.__name__} is not a {family.__name__}"
        assert cls in client_errors.ERROR_CLASSES


def test_typescript_client_has_a_class_per_reason() -> None:
    classes = typescript_classes()
    assert set(classes) == proto_reasons()
    python_names = {r: c.__name__ for r, c in client_errors._BY_REASON.items()}
    assert classes == python_names, "the two clients name the classes differently"


def test_typescript_classes_sit_in_the_same_code_family() -> None:
    text = (REPO / "clients" / "typescript" / "src" / "errors.ts").read_text(encoding="utf-8")
    parents = dict(re.findall(r"export class (\w+) extends (\w+)", text))
    for reason, name in typescript_classes().items():
        python_cls = client_errors._BY_REASON[reason]
        assert parents.get(name) == python_cls.__mro__[1].__name__, (reason, name)


def test_operator_hints_cover_every_reason() -> None:
    assert set(hints._HINTS) == proto_reasons()


def test_readme_table_lists_every_reason_with_the_servers_code() -> None:
    table = readme_table()
    assert set(table) == proto_reasons()
    codes = server_codes()
    assert table == {reason: codes[reason].name for reason in table}


def test_client_contract_table_matches() -> None:
    codes = server_codes()
    assert set(CONTRACT) == proto_reasons()
    assert {r: code for r, (code, _, _) in CONTRACT.items()} == codes


@pytest.mark.parametrize("reason", sorted(proto_reasons()))
def test_each_reason_is_named_in_the_proto_comments(reason: str) -> None:
    # The enum value's comment starts with the gRPC code the reason travels with.
    proto = (REPO / "protos" / "creditledger" / "v1" / "ledger.proto").read_text(encoding="utf-8")
    match = re.search(rf"// ([A-Z_]+):[^\n]*\n\s*{PREFIX}{reason} = \d+;", proto)
    assert match, f"{reason}: no comment naming its code above the enum value"
    assert match.group(1) == server_codes()[reason].name
