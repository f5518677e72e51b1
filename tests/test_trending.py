"""Regional time-decayed engagement: a recent burst beats an older one of the same size; rebasing the
reference time (to avoid overflow) keeps the order; regions are separate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foryou.trending import Trending

HOUR = 3600.0
TAU = 12 * HOUR / math.log(2)  # 12 h half-life
T = 1_700_000_000.0


def decayed(tr: Trending, region: str, idx: int, now: float) -> float:
    return float(tr.scores[region][idx]) * math.exp((tr.t0 - now) / tr.tau)


def test_recent_burst_beats_old_burst_of_equal_size() -> None:
    tr = Trending(("us",), TAU)
    for k in range(10):
        tr.add("us", 3, 1.0, T + k)  # old burst on item 3
    for k in range(10):
        tr.add("us", 5, 1.0, T + 6 * HOUR + k)  # same size, six hours later, on item 5
    now = T + 7 * HOUR
    assert tr.top("us", 2, now).tolist() == [5, 3]
    # item 5's score is worth 2**(6/12) times item 3's
    assert decayed(tr, "us", 5, now) / decayed(tr, "us", 3, now) == pytest.approx(2 ** 0.5, rel=1e-3)
    assert decayed(tr, "us", 5, now) == pytest.approx(10 * 2 ** (-1 / 12), rel=1e-3)


def test_a_bigger_old_burst_can_still_win() -> None:
    tr = Trending(("us",), TAU)
    tr.add("us", 0, 10.0, T)  # worth 10 * 2**-1 = 5 twelve hours later
    tr.add("us", 1, 4.0, T + 12 * HOUR)
    assert tr.top("us", 2, T + 12 * HOUR).tolist() == [0, 1]
    tr.invalidate()
    tr.add("us", 1, 2.0, T + 12 * HOUR)  # now 6 > 5
    assert tr.top("us", 2, T + 12 * HOUR).tolist() == [1, 0]


def test_zero_weight_is_a_no_op_and_negative_scores_are_not_trending() -> None:
    tr = Trending(("us",), TAU)
    tr.add("us", 2, 0.0, T)
    assert tr.t0 == 0.0 and not tr.dirty["us"]
    tr.add("us", 2, -1.0, T)
    tr.add("us", 4, 1.0, T)
    assert tr.top("us", 10, T).tolist() == [4]


def test_regions_are_separate() -> None:
    tr = Trending(("us", "eu"), TAU)
    tr.add("us", 1, 5.0, T)
    tr.add("eu", 2, 1.0, T)
    tr.add("eu", 3, 2.0, T)
    assert tr.top("us", 5, T).tolist() == [1]
    assert tr.top("eu", 5, T).tolist() == [3, 2]
    assert tr.dirty == {"us": {1}, "eu": {2, 3}}


def test_rebase_keeps_order_and_values() -> None:
    tau = 100.0
    tr = Trending(("us", "eu"), tau)
    tr.add("us", 0, 50.0, T)
    tr.add("us", 1, 1.0, T + 15_000)  # 150 tau later
    tr.add("eu", 7, 3.0, T + 15_000)
    now = T + 15_000
    before_order = tr.top("us", 3, now).tolist()
    before = {i: decayed(tr, "us", i, now) for i in (0, 1)}
    tr.dirty["us"].clear()
    tr.dirty["eu"].clear()
    tr.add("us", 2, 0.5, T + 25_000)  # 250 tau after t0: forces a rebase
    assert tr.t0 == T + 25_000
    assert np.isfinite(tr.scores["us"]).all() and np.isfinite(tr.scores["eu"]).all()
    later = T + 25_000
    tr.invalidate()
    assert tr.top("us", 3, later).tolist() == [2, *before_order] == [2, 1, 0]
    for i in (0, 1):  # decayed values are unchanged by the rebase
        assert decayed(tr, "us", i, later) == pytest.approx(before[i] * math.exp(-(later - now) / tau), rel=1e-9)
    assert decayed(tr, "eu", 7, later) == pytest.approx(3.0 * math.exp(-100.0), rel=1e-9)
    # every rescaled score is marked dirty, so the next checkpoint saves it
    assert tr.dirty["us"] >= {0, 1, 2} and tr.dirty["eu"] >= {7}


def test_top_k_and_growth() -> None:
    tr = Trending(("us",), TAU)
    for idx in range(3000):  # past the initial array size
        tr.add("us", idx, float((idx * 7919) % 3000) + 1.0, T)  # a permutation of 1..3000
    by_weight = sorted(range(3000), key=lambda i: -((i * 7919) % 3000))
    assert tr.top("us", 5, T).tolist() == by_weight[:5]
    tr.invalidate()
    assert tr.top("us", 1200, T).tolist() == by_weight[:1200]
    assert len(tr.scores["us"]) >= 3000


def test_top_is_cached_briefly() -> None:
    tr = Trending(("us",), TAU)
    tr.add("us", 0, 1.0, T)
    assert tr.top("us", 3, T).tolist() == [0]
    tr.add("us", 1, 5.0, T)
    assert tr.top("us", 3, T + 1).tolist() == [0]  # cached
    assert tr.top("us", 3, T + 3).tolist() == [1, 0]  # recomputed after max_age_s


@pytest.mark.parametrize("seed", range(12))
def test_the_incremental_top_is_the_full_top(seed: int) -> None:
    """The top list kept from the last one plus the changed items equals a full pass over the scores,
    also when scores fall (early swipes), when many items change, and across a rebase."""
    rng = np.random.default_rng(seed)
    tr = Trending(("us",), TAU)
    n = int(rng.integers(1500, 6000))
    now = T
    for step in range(30):
        count = int(rng.choice([5, 50, 2000]))
        idx = rng.integers(0, n, count)
        weights = rng.choice([1.0, 0.5, -0.3, -2.0], count, p=[0.4, 0.3, 0.2, 0.1])
        now += float(rng.choice([1.0, 3.0, 600.0, 150 * 24 * HOUR if step == 15 else 5.0]))
        tr.add_many("us", idx, weights, np.full(count, now))
        k = int(rng.choice([10, 300, 1000]))
        got = tr.top("us", k, now, max_age_s=0.0)
        arr = tr.scores["us"]
        positive = np.flatnonzero(arr > 0)
        want = positive[np.argsort(-arr[positive], kind="stable")][:k]
        assert np.array_equal(arr[got], arr[want])  # the same scores in the same order (ties may swap)
        assert set(got.tolist()) <= set(positive.tolist()) and len(got) == len(want)


def test_the_incremental_top_when_most_listed_items_fall_at_once() -> None:
    """Few changes, but they sink most of the listed items: the bound carried from the last list must
    force a full pass (the scores just below the old list now lead)."""
    tr = Trending(("us",), TAU)
    n = 20000
    tr.add_many("us", np.arange(n), np.linspace(1.0, 2.0, n), np.full(n, T))
    tr.top("us", 10, T, max_age_s=0.0)
    listed = np.argsort(-tr.scores["us"])[:2000]
    fall = listed[:1500]
    tr.add_many("us", fall, -(tr.scores["us"][fall] - 1e-6), np.full(len(fall), T))
    got = tr.top("us", 1000, T + 1, max_age_s=0.0)
    arr = tr.scores["us"]
    positive = np.flatnonzero(arr > 0)
    assert np.array_equal(arr[got], arr[positive[np.argsort(-arr[positive], kind="stable")][:1000]])


def test_changes_are_not_kept_for_ever_where_no_top_list_is_asked_for() -> None:
    tr = Trending(("us", "eu"), TAU)
    tr.top("eu", 10, T)
    for step in range(500):  # events in eu, feeds in neither
        tr.add_many("eu", np.arange(step, step + 100) % 3000, np.ones(100), np.full(100, T + step))
    assert sum(len(c) for c in tr._changed["eu"]) <= len(tr.scores["eu"]) // 8
