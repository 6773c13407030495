"""docs/sql-inventory.txt lists every SQL statement the ledger issues, and the docs keep up.

A statement added or changed in ledger/storage/ fails here until the inventory
is regenerated (`python -m tests.deploy.sql_inventory --write`), which puts the
change in front of a reviewer next to docs/distributed-sql.md. Every SQL
feature that matters on CockroachDB or YugabyteDB and appears in the inventory
must be discussed in that doc.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy import sql_inventory
from tests.deploy.files import REPO

pytestmark = pytest.mark.timeout(60)

DISTRIBUTED_DOC = REPO / "docs" / "distributed-sql.md"

# feature: (pattern in the inventory's SQL, words docs/distributed-sql.md must use)
FEATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "advisory locks": (r"\bpg_(?:try_)?advisory_(?:xact_)?(?:un)?lock", ("pg_advisory_xact_lock",)),
    "SERIALIZABLE transactions": (r"ISOLATION LEVEL SERIALIZABLE", ("SERIALIZABLE", "40001")),
    "REPEATABLE READ reads": (r"ISOLATION LEVEL REPEATABLE READ", ("REPEATABLE READ",)),
    "upserts": (r"\bON CONFLICT\b", ("ON CONFLICT",)),
    "unnest bulk statements": (r"\bunnest\(", ("unnest",)),
    "data-modifying CTEs": (r"\bAS \( (?:INSERT|UPDATE|DELETE)\b", ("data-modifying",)),
    "identity columns and sequences": (
        r"GENERATED (?:ALWAYS|BY DEFAULT) AS IDENTITY|\bnextval\(|\bserial\b|\bbigserial\b",
        ("IDENTITY", "sequence"),
    ),
    "triggers": (r"\bCREATE TRIGGER\b", ("trigger",)),
    "statement-level TRUNCATE triggers": (r"BEFORE TRUNCATE", ("TRUNCATE",)),
    "PL/pgSQL functions": (r"LANGUAGE plpgsql", ("PL/pgSQL",)),
    "ctid": (r"\bctid\b", ("ctid",)),
    "SKIP LOCKED": (r"\bSKIP LOCKED\b", ("SKIP LOCKED",)),
    "row locks": (r"\bFOR (?:NO KEY )?UPDATE\b|\bFOR (?:KEY )?SHARE\b", ("FOR UPDATE",)),
    "partial indexes": (r"\bCREATE (?:UNIQUE )?INDEX \w+ ON \w+ \([^)]*\) WHERE\b", ("partial",)),
    "jsonb": (r"\bjsonb\b", ("jsonb",)),
    "aggregate FILTER": (r"\bFILTER \(WHERE\b", ("FILTER",)),
    "LISTEN/NOTIFY": (r"\b(?:LISTEN|NOTIFY)\b", ("NOTIFY",)),
    "LATERAL joins": (r"\bLATERAL\b", ("LATERAL",)),
    "DDL inside migrations": (r"\bCREATE TABLE\b", ("DDL",)),
}


def _sql() -> str:
    return "\n".join(s.sql for s in sql_inventory.statements())


def test_inventory_is_up_to_date() -> None:
    fresh = sql_inventory.render(sql_inventory.statements())
    current = sql_inventory.INVENTORY.read_text() if sql_inventory.INVENTORY.exists() else ""
    assert current == fresh, (
        "the SQL the ledger issues changed: run `python -m tests.deploy.sql_inventory --write`, "
        "review the diff of docs/sql-inventory.txt and update docs/distributed-sql.md"
    )


def test_the_inventory_is_not_empty_and_covers_the_storage_modules() -> None:
    found = sql_inventory.statements()
    places = {s.where.split(":")[0] for s in found}
    assert any(p.endswith(".sql") for p in places), "migrations are listed"
    assert "ledger/storage/postgres.py" in places
    assert any(s.sql.startswith(("INSERT", "WITH")) for s in found)


def test_no_sql_outside_ledger_storage() -> None:
    """The inventory scans ledger/storage/ only, so SQL elsewhere would escape it."""
    offenders = []
    for path in sorted((REPO / "ledger").rglob("*.py")):
        if sql_inventory.STORAGE in path.parents:
            continue
        statements = [
            s for s in sql_inventory.python_statements(path) if not s.sql.startswith("BEGIN")
        ]
        offenders += [f"{s.where}: {s.sql[:80]}" for s in statements]
    assert not offenders, "SQL belongs in ledger/storage/:\n" + "\n".join(offenders)


def test_distributed_sql_doc_discusses_every_feature_the_ledger_uses() -> None:
    sql = _sql()
    doc = DISTRIBUTED_DOC.read_text()
    missing = [
        f"{feature} (doc must mention {word!r})"
        for feature, (pattern, words) in FEATURES.items()
        if re.search(pattern, sql)
        for word in words
        if word.lower() not in doc.lower()
    ]
    assert not missing, "docs/distributed-sql.md is silent about:\n" + "\n".join(missing)


def test_distributed_sql_doc_names_every_table() -> None:
    tables = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", _sql()))
    assert tables
    doc = DISTRIBUTED_DOC.read_text()
    missing = sorted(t for t in tables if f"`{t}`" not in doc)
    assert not missing, f"docs/distributed-sql.md does not say how these spread: {missing}"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT ';' -- a comment; with a semicolon\n;", ["SELECT ';'"]),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql;",
            ["CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql"],
        ),
        ("/* a; b */ SELECT $tag$ ; $tag$", ["SELECT $tag$ ; $tag$"]),
    ],
)
def test_split_sql_respects_quotes_comments_and_dollar_bodies(
    script: str, expected: list[str]
) -> None:
    assert list(sql_inventory.split_sql(script)) == expected


def test_extracts_f_strings_built_from_constants_and_transactions() -> None:
    import ast

    source = (
        'COLS = "a, b"\n'
        "async def read(conn):\n"
        "    async with conn.transaction(isolation='serializable'):\n"
        '        await conn.fetch(f"SELECT {COLS} FROM t" " WHERE a = $1", 1)\n'
        '    """SELECT in a docstring is not SQL."""\n'
    )
    tree = ast.parse(source)
    extractor = sql_inventory._Extractor("x.py", sql_inventory._module_constants(tree))
    extractor.visit(tree)
    assert [s.sql for s in extractor.found] == [
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "SELECT a, b FROM t WHERE a = $1",
    ]
