"""The region log's look-up tail (`store/log_index.py`): what a merge leaves it, and what an erasure took."""

from __future__ import annotations

from foryou.store.log_index import Tail


def test_a_merge_leaves_the_rows_past_it_and_an_erasure_stays() -> None:
    tail = Tail()
    tail.add_many(1, ["a", "b", "a", "c", "b"], [11, None, 13, 14, 15], 5.0)
    assert tail.forget("c", [14]) == 1  # erased: its key and rows are no longer looked up
    tail._drop(2)
    assert list(tail.rows) == [(3, "a", 13), (4, "c", 14), (5, "b", 15)]
    assert tail.keys == {13: (3, 5.0), 15: (5, 5.0)}
    assert tail.users == {"a": [3], "b": [5]}
    tail._drop(2)  # nothing more merged: unchanged
    assert len(tail.rows) == 3
    tail._drop(5)
    assert not tail.rows and not tail.keys and not tail.users
    tail.add_many(6, ["d"], [16], 6.0)
    assert tail.keys == {16: (6, 6.0)} and tail.users == {"d": [6]} and tail.seen == 6
