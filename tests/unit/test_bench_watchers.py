"""The bench's stream consumers compare what each stream received (tests/bench/watchers.py)."""

from __future__ import annotations

from tests.bench.watchers import common_counts


def test_streams_opened_one_after_the_other_agree_from_the_last_ones_start() -> None:
    assert common_counts([["a", "b", "c", "d"], ["b", "c", "d"], ["c", "d"]]) == [2, 2, 2]


def test_streams_stopped_at_different_points_agree_up_to_the_first_ones_end() -> None:
    # Each consumer is stopped between two polls: a later poll got more of the tail.
    assert common_counts([["a", "b", "c", "d"], ["a", "b", "c"], ["a", "b"]]) == [2, 2, 2]
    assert common_counts([["a", "b", "c"], ["b", "c", "d", "e"]]) == [2, 2]


def test_a_stream_that_missed_a_transaction_disagrees() -> None:
    assert common_counts([["a", "b", "c", "d"], ["b", "d"]]) == [3, 2]


def test_a_stream_that_repeated_a_transaction_disagrees() -> None:
    assert common_counts([["a", "b", "c"], ["b", "b", "c"]]) == [2, 3]


def test_a_stream_that_began_with_something_the_others_never_got_is_marked() -> None:
    assert common_counts([["a", "b", "c"], ["x", "c"]]) == [-1, -1]
    assert common_counts([[], []]) == [-1, -1]
