"""Readers for the deployment files the deploy tests check (Dockerfile, .dockerignore, YAML)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"

# How long the server drains in-flight calls after SIGTERM (ledger serve).
SERVER_DRAIN_SECONDS_MAX = 10


def env_names_read_by_the_server() -> set[str]:
    """Every LEDGER_* name quoted in the server's code (flags' env fallbacks and the like)."""
    names: set[str] = set()
    for path in (REPO / "ledger").rglob("*.py"):
        names.update(re.findall(r"[\"'](LEDGER_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, comments dropped, continuations joined."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def exec_form(args: str) -> list[str]:
    """The argv of a JSON (exec form) CMD/ENTRYPOINT/HEALTHCHECK CMD; shell form is split."""
    if args.startswith("["):
        value = json.loads(args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"not an exec-form list: {args}")
        return list(value)
    return shlex.split(args)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last build stage (the image that runs)."""
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    """The last instruction with `keyword` (the one in force)."""
    found = [ins for ins in instructions if ins.keyword == keyword]
    if not found:
        raise LookupError(f"no {keyword} in the Dockerfile")
    return found[-1]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in argv, None when absent."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def port_of(address: str) -> int:
    """The port of HOST:PORT (or [V6]:PORT)."""
    return int(address.rsplit(":", 1)[1])


# --- .dockerignore ----------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line, in order: Docker lets the last matching line win."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((not negated, _pattern_regex(pattern)))
    return rules


def in_build_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the file `relative` (to the context root) reaches the build context.

    A pattern matches a path or any of its parent directories; the last match wins.
    """
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for excludes, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            included = not excludes
    return included


# --- YAML ------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file, each a mapping."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise TypeError(f"{path}: a document is not a mapping")
    return docs
