"""What an event says about a user's interest: the engine-wide definitions, as pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def is_completion(watch_s: float, duration_s: float) -> bool:
    """A view watched to at least 90% (or looped)."""
    return watch_s >= 0.9 * duration_s


def is_early_swipe(watch_s: float, duration_s: float) -> bool:
    """A swipe away in the first seconds: under min(2 s, 20% of the video)."""
    return watch_s < min(2.0, 0.2 * duration_s)


def completion_mask(watch_s: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """`is_completion` over arrays."""
    return watch_s >= 0.9 * duration_s


def early_swipe_mask(watch_s: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """`is_early_swipe` over arrays."""
    return watch_s < np.minimum(2.0, 0.2 * duration_s)


# Interest given by each explicit action (on the item's tags, topic, creator and sound).
ACTION_STRENGTH = {
    "like": 1.0,
    "comment": 1.5,
    "share": 2.0,
    "follow": 2.0,
    "not_interested": -4.0,
    "report": -6.0,
}

# Engagement each event adds to an item's trending score: a view by (completion, partial, early swipe).
TREND_VIEW = (1.0, 0.3, 0.0)
TREND_WEIGHT = {"like": 1.0, "comment": 1.5, "share": 2.0, "follow": 2.0, "not_interested": -1.0, "report": -2.0}


def view_strength(watch_s: float, duration_s: float) -> float:
    """Watch time relative to duration: completion is a strong positive (looping stronger still), an
    early swipe a negative, and partial views are graded in between."""
    if is_early_swipe(watch_s, duration_s):
        return -0.5
    ratio = watch_s / duration_s
    if ratio >= 0.9:
        return 1.0 + 0.5 * min(max(ratio - 1.0, 0.0), 1.0)
    return ratio - 0.25


def strong_mask(kinds: Sequence[str], watch_s: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """Which events are strong positives (`event_strength` >= 1), over arrays: completed views that
    are not early swipes, and the actions of strength 1 or more."""
    n = len(kinds)
    view = np.fromiter((k == "view" for k in kinds), np.bool_, n)
    action = np.fromiter((ACTION_STRENGTH.get(k, 0.0) >= 1.0 for k in kinds), np.bool_, n)
    return np.where(view, completion_mask(watch_s, duration_s) & ~early_swipe_mask(watch_s, duration_s), action)


def event_strength(kind: str, watch_s: float, duration_s: float) -> float:
    if kind == "view":
        return view_strength(watch_s, duration_s)
    return ACTION_STRENGTH[kind]


def trend_weight(kind: str, watch_s: float, duration_s: float) -> float:
    if kind == "view":
        if is_completion(watch_s, duration_s):
            return TREND_VIEW[0]
        return TREND_VIEW[2] if is_early_swipe(watch_s, duration_s) else TREND_VIEW[1]
    return TREND_WEIGHT[kind]
