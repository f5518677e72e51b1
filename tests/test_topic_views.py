"""foryou/topic_views.py: a user's per-topic views and completions as arrays count as the dict they
replace did, halve past the bound, and make room by dropping the least viewed topic."""

from __future__ import annotations

import numpy as np
import pytest

from foryou.topic_views import TopicViews


@pytest.mark.parametrize("seed", range(5))
def test_counts_as_a_dict_would(seed: int) -> None:
    rng = np.random.default_rng(seed)
    views, expected = TopicViews(), {}
    for _ in range(500):
        topic, done = int(rng.integers(0, 12)), bool(rng.random() < 0.4)
        views.count(topic, done, most=64, halve_at=15.0)
        v, c = expected.get(topic, (0.0, 0.0))
        v, c = v + 1.0, c + float(done)
        expected[topic] = (v / 2, c / 2) if v > 15.0 else (v, c)
    assert dict(views.items()) == expected
    assert views == TopicViews.of(expected) and len(views) == len(expected)
    assert views.get(3) == expected.get(3) and views.get(99) is None
    copy = views.copy()
    copy.count(99, True, 64, 15.0)
    assert views.get(99) is None and copy.get(99) == (1.0, 1.0)


def test_the_least_viewed_topic_makes_room() -> None:
    views = TopicViews()
    for topic, n in ((1, 5), (2, 1), (3, 3)):
        for _ in range(n):
            views.count(topic, False, most=3, halve_at=100.0)
    views.count(4, True, most=3, halve_at=100.0)
    assert dict(views.items()) == {1: (5.0, 0.0), 3: (3.0, 0.0), 4: (1.0, 1.0)}
    assert len(views) == 3


@pytest.mark.parametrize("seed", range(5))
def test_counting_many_at_once_counts_as_one_at_a_time(seed: int) -> None:
    """The fold of a user's logged views (`count_many`) and the views counted as they come agree,
    halving and making room included (few topics allowed, so that some are dropped)."""
    rng = np.random.default_rng(seed)
    one, many = TopicViews(), TopicViews()
    for _ in range(3):  # several folds, each on what the last left
        views = [(int(rng.integers(0, 9)), bool(rng.random() < 0.4)) for _ in range(int(rng.integers(0, 80)))]
        for topic, done in views:
            one.count(topic, done, most=5, halve_at=6.0)
        many.count_many(views, most=5, halve_at=6.0)
        assert one.codes.tolist() == many.codes.tolist() and one.counts.tolist() == many.counts.tolist()
    assert len(many) == 5
