"""Every SQL statement the ledger issues, listed from its sources.

The ledger keeps its SQL in ledger/storage/ (Python string literals and the
numbered migration files). This module extracts those statements, without
running anything, so that docs/sql-inventory.txt can list them and
tests/deploy/test_sql_inventory.py can fail when one is added or changed
without the inventory (and so docs/distributed-sql.md) being looked at again.

    python -m tests.deploy.sql_inventory           # exit 1 and a diff when stale
    python -m tests.deploy.sql_inventory --write   # regenerate the inventory

What counts as a statement: a string literal (plain, implicitly concatenated,
`+`-joined, or an f-string) that starts with an upper-case SQL keyword; the
isolation level of each `conn.transaction(...)` call (asyncpg sends it as
BEGIN); and each statement of each migration file. An f-string placeholder
naming a module-level string constant is filled in; any other stays as
`{expression}` (a template such as "SELECT count(*) FROM {table}"), and what
fills it must itself be a literal listed here. SQL glued together at run time
from other pieces cannot be listed: keep statements literal.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STORAGE = REPO / "ledger" / "storage"
INVENTORY = REPO / "docs" / "sql-inventory.txt"

_KEYWORDS = (
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "WITH",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "LOCK",
    "SET",
    "SHOW",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "COPY",
    "VACUUM",
    "ANALYZE",
    "NOTIFY",
    "LISTEN",
    "DO",
)
_STATEMENT = re.compile(r"\s*(?:" + "|".join(_KEYWORDS) + r")\b")
_WIDTH = 100

HEADER = """\
# Every SQL statement the ledger issues, extracted from ledger/storage/ (Python
# literals and migrations). GENERATED: python -m tests.deploy.sql_inventory --write
# tests/deploy/test_sql_inventory.py fails when this file is stale. When it
# changes, check docs/distributed-sql.md still tells the truth about it.
# Whitespace is collapsed; long statements wrap with a 4-space indent.
"""


@dataclass(frozen=True)
class Statement:
    """One SQL statement and where it is written (file and enclosing function)."""

    where: str
    sql: str


def normalize(sql: str) -> str:
    """Collapse whitespace runs (SQL's meaning does not depend on them outside literals)."""
    return " ".join(sql.split())


class _Extractor(ast.NodeVisitor):
    def __init__(self, relative: str, constants: dict[str, str]) -> None:
        self.relative = relative
        self.constants = constants
        self.scope: list[str] = []
        self.found: list[Statement] = []
        self._claimed: set[int] = set()

    def _where(self) -> str:
        return f"{self.relative}: {'.'.join(self.scope) or '<module>'}"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node.name, node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scoped(node.name, node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node.name, node)

    def _scoped(self, name: str, node: ast.AST) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_Assign(self, node: ast.Assign) -> None:
        # Module-level SQL constants are listed where they are defined.
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring, not SQL
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "transaction":
            self.found.append(Statement(self._where(), _begin(node)))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        text = evaluate(node, self.constants)
        if text is not None and _STATEMENT.match(text):
            self._add(node, text)
            return
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        text = evaluate(node, self.constants)
        if text is None:
            # A template filled at run time: listed with its placeholders, e.g.
            # "SELECT count(*) FROM {table}". What fills them must be listed too.
            text = _template(node, self.constants)
        if _STATEMENT.match(text):
            self._add(node, text)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _STATEMENT.match(node.value):
            self._add(node, node.value)

    def _add(self, node: ast.AST, text: str) -> None:
        if id(node) not in self._claimed:
            self._claimed.add(id(node))
            self.found.append(Statement(self._where(), normalize(text)))


def _begin(call: ast.Call) -> str:
    """The BEGIN asyncpg sends for `conn.transaction(isolation=..., readonly=...)`."""
    options = {k.arg: k.value for k in call.keywords if k.arg}
    sql = "BEGIN"
    level = options.get("isolation")
    if isinstance(level, ast.Constant) and isinstance(level.value, str):
        sql += " ISOLATION LEVEL " + level.value.replace("_", " ").upper()
    elif level is not None and not (isinstance(level, ast.Constant) and level.value is None):
        sql += " ISOLATION LEVEL <computed>"
    readonly = options.get("readonly")
    if isinstance(readonly, ast.Constant) and readonly.value is True:
        sql += " READ ONLY"
    deferrable = options.get("deferrable")
    if isinstance(deferrable, ast.Constant) and deferrable.value is True:
        sql += " DEFERRABLE"
    return sql


def evaluate(node: ast.AST, constants: dict[str, str]) -> str | None:
    """The text of a string expression made of literals and named string constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = evaluate(node.left, constants), evaluate(node.right, constants)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                if value.format_spec is not None or value.conversion != -1:
                    return None
                part = evaluate(value.value, constants)
            else:
                part = evaluate(value, constants)
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)
    return None


def _template(node: ast.JoinedStr, constants: dict[str, str]) -> str:
    parts = []
    for value in node.values:
        inner = value.value if isinstance(value, ast.FormattedValue) else value
        text = evaluate(inner, constants)
        parts.append(text if text is not None else "{" + ast.unparse(inner) + "}")
    return "".join(parts)


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = <string expression>, resolved in order."""
    constants: dict[str, str] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if value is None:
            continue
        text = evaluate(value, constants)
        if text is None:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                constants[target.id] = text
    return constants


def python_statements(path: Path) -> list[Statement]:
    """The SQL statements written in one Python module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    extractor = _Extractor(path.relative_to(REPO).as_posix(), _module_constants(tree))
    extractor.visit(tree)
    return extractor.found


def split_sql(script: str) -> Iterator[str]:
    """Statements of a SQL script: splits on `;` outside quotes, comments and $tag$ bodies."""
    current: list[str] = []
    i = 0
    while i < len(script):
        ch = script[i]
        if script.startswith("--", i):
            end = script.find("\n", i)
            i = len(script) if end == -1 else end
            continue
        if script.startswith("/*", i):
            end = script.find("*/", i + 2)
            i = len(script) if end == -1 else end + 2
            continue
        if ch in "'\"":
            end = script.find(ch, i + 1)
            end = len(script) - 1 if end == -1 else end
            current.append(script[i : end + 1])
            i = end + 1
            continue
        dollar = re.match(r"\$[A-Za-z_]*\$", script[i:])
        if dollar:
            tag = dollar.group(0)
            end = script.find(tag, i + len(tag))
            end = len(script) - len(tag) if end == -1 else end
            current.append(script[i : end + len(tag)])
            i = end + len(tag)
            continue
        if ch == ";":
            text = normalize("".join(current))
            if text:
                yield text
            current = []
        else:
            current.append(ch)
        i += 1
    text = normalize("".join(current))
    if text:
        yield text


def migration_statements() -> list[Statement]:
    out: list[Statement] = []
    for path in sorted((STORAGE / "migrations").glob("*.sql")):
        where = path.relative_to(REPO).as_posix()
        out.extend(Statement(where, sql) for sql in split_sql(path.read_text()))
    return out


def statements() -> list[Statement]:
    """Every statement, Python modules first (by path), then migrations (by number)."""
    found: list[Statement] = []
    for path in sorted(STORAGE.rglob("*.py")):
        found.extend(python_statements(path))
    found.extend(migration_statements())
    return found


def render(found: list[Statement]) -> str:
    lines = [HEADER]
    where = None
    for statement in found:
        if statement.where != where:
            where = statement.where
            lines.append(f"\n## {where}\n")
        wrapped = textwrap.wrap(
            statement.sql,
            width=_WIDTH,
            subsequent_indent="    ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines.append("\n".join(wrapped) + "\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help=f"rewrite {INVENTORY.name}")
    args = parser.parse_args(argv)
    fresh = render(statements())
    if args.write:
        INVENTORY.write_text(fresh)
        print(f"wrote {INVENTORY.relative_to(REPO)}: {fresh.count(chr(10))} lines")
        return 0
    current = INVENTORY.read_text() if INVENTORY.exists() else ""
    if current == fresh:
        print(f"{INVENTORY.relative_to(REPO)} is up to date")
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            "docs/sql-inventory.txt (checked in)",
            "ledger/storage (now)",
        )
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
