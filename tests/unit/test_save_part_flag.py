"""`serve --save-part-commands`: the writer's statement size for large transactions."""

from __future__ import annotations

import argparse

from ledger import config


def _parse(*argv: str) -> config.Config:
    p = argparse.ArgumentParser()
    config.add_serve_flags(p)
    return config.from_args(p.parse_args(list(argv)))


def test_parts_of_128_commands_by_default_and_0_means_one_statement() -> None:
    assert _parse().save_part_commands == 128
    cfg = _parse("--save-part-commands", "0")
    assert cfg.save_part_commands == 0
    assert not any("save-part" in p for p in cfg.problems())


def test_a_negative_part_is_refused_naming_the_flag() -> None:
    problems = _parse("--save-part-commands", "-1").problems()
    assert problems == ["--save-part-commands must be 0 (one statement) or more"]
