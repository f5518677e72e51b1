"""The engine-wide definitions of a completion and an early swipe, and the strengths derived from them."""

from __future__ import annotations

import numpy as np
import pytest

from foryou.signals import (
    ACTION_STRENGTH,
    TREND_WEIGHT,
    event_strength,
    is_completion,
    is_early_swipe,
    strong_mask,
    trend_weight,
    view_strength,
)
from foryou.types import EVENT_TYPES


@pytest.mark.parametrize(("watch", "duration", "expected"), [
    (9.0, 10.0, True),  # exactly 90%
    (8.99, 10.0, False),
    (10.0, 10.0, True),
    (25.0, 10.0, True),  # looped
    (0.0, 10.0, False),
    (54.0, 60.0, True),
    (53.9, 60.0, False),
    (0.9, 1.0, True),
    (0.89, 1.0, False),
])
def test_completion(watch: float, duration: float, expected: bool) -> None:
    assert is_completion(watch, duration) is expected


@pytest.mark.parametrize(("watch", "duration", "expected"), [
    # long videos: the threshold is 2 s
    (1.99, 60.0, True),
    (2.0, 60.0, False),
    (0.0, 60.0, True),
    (3.0, 60.0, False),
    # exactly 10 s: 20% is 2 s as well
    (1.99, 10.0, True),
    (2.0, 10.0, False),
    # short videos: the threshold is 20% of the duration
    (0.99, 5.0, True),
    (1.0, 5.0, False),
    (1.5, 5.0, False),
    (0.19, 1.0, True),
    (0.2, 1.0, False),
])
def test_early_swipe(watch: float, duration: float, expected: bool) -> None:
    assert is_early_swipe(watch, duration) is expected


@pytest.mark.parametrize("duration", [0.5, 1.0, 3.0, 9.99, 10.0, 10.01, 30.0, 600.0])
def test_completion_and_early_swipe_never_overlap(duration: float) -> None:
    for k in range(0, 301):
        watch = duration * k / 100
        assert not (is_completion(watch, duration) and is_early_swipe(watch, duration))


def test_view_strength_orders_views() -> None:
    d = 20.0
    swipe = view_strength(1.0, d)
    partial_low = view_strength(6.0, d)
    partial_high = view_strength(15.0, d)
    complete = view_strength(18.0, d)
    looped = view_strength(40.0, d)
    assert swipe < 0 < partial_high
    assert swipe < partial_low < partial_high < complete < looped
    assert complete == pytest.approx(1.0)
    assert looped == pytest.approx(1.5)  # a full second loop saturates the bonus
    assert view_strength(400.0, d) == pytest.approx(1.5)


def test_event_strength_signs() -> None:
    for kind in ("like", "comment", "share", "follow"):
        assert event_strength(kind, 0.0, 10.0) == ACTION_STRENGTH[kind] > 0
    for kind in ("not_interested", "report"):
        assert event_strength(kind, 0.0, 10.0) == ACTION_STRENGTH[kind] < 0
    assert event_strength("view", 10.0, 10.0) >= 1.0
    assert event_strength("view", 0.5, 10.0) < 0


def test_trend_weight() -> None:
    assert trend_weight("view", 9.0, 10.0) == 1.0
    assert trend_weight("view", 1.0, 10.0) == 0.0
    assert trend_weight("view", 5.0, 10.0) == pytest.approx(0.3)
    for kind, w in TREND_WEIGHT.items():
        assert trend_weight(kind, 0.0, 10.0) == w
    assert trend_weight("report", 0.0, 10.0) < trend_weight("not_interested", 0.0, 10.0) < 0


def test_strong_mask_is_event_strength_of_one_or_more() -> None:
    kinds = list(EVENT_TYPES) * 40
    rng = np.random.default_rng(0)
    watch = rng.choice([0.0, 1.0, 1.9, 2.5, 8.9, 9.0, 10.0, 30.0], len(kinds))
    duration = rng.choice([3.0, 10.0, 60.0], len(kinds))
    want = [event_strength(k, w, d) >= 1.0 for k, w, d in zip(kinds, watch, duration, strict=True)]
    got = strong_mask(kinds, watch, duration)
    assert got.tolist() == want and 0 < sum(want) < len(want)
