"""Operator subcommands (account, grant, reserve, ...). Filled in by the client work."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register operator subcommands; each sets `func(args) -> int` as its default."""
