"""The README's grpcurl session as a list of shell commands, for the test that runs them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC_TARGET = "127.0.0.1:50051"
# The block is the fenced bash block whose first command lists the services.
_MARKER = f"grpcurl -plaintext {DOC_TARGET} list"
_FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def session_source() -> tuple[Path, str]:
    """README.md's session when the README carries it, else docs/grpcurl-session.md's."""
    for path in (REPO / "README.md", REPO / "docs" / "grpcurl-session.md"):
        if not path.exists():
            continue
        for block in _FENCE.findall(path.read_text()):
            if _MARKER in block:
                return path, block
    raise AssertionError(f"no ```bash block with `{_MARKER}` in README.md or docs/")


def commands(block: str) -> list[str]:
    """Commands of a bash block: continuation lines joined, comments and blanks dropped."""
    result: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        result.append(pending + line)
        pending = ""
    if pending:
        raise AssertionError(f"the block ends inside a continued command: {pending!r}")
    return result


def script(cmds: list[str], target: str) -> str:
    """One bash script that runs each command, marking where its output starts and its status."""
    lines = ["exec 2>&1"]
    for i, cmd in enumerate(cmds):
        lines += [
            f"printf '\\n@@@ start {i}\\n'",
            cmd.replace(DOC_TARGET, target),
            f"printf '\\n@@@ status {i} %d\\n' $?",
        ]
    return "\n".join(lines) + "\n"


def split_output(output: str, count: int) -> list[tuple[int, str]]:
    """(exit status, output) of each command, from the script's marked output."""
    results: list[tuple[int, str]] = []
    for i in range(count):
        match = re.search(rf"\n@@@ start {i}\n(.*?)\n@@@ status {i} (\d+)\n", output, re.DOTALL)
        if match is None:
            raise AssertionError(f"command {i} did not finish; output so far:\n{output}")
        results.append((int(match[2]), match[1]))
    return results
