"""Exploration: a Thompson-sampling bandit over topics. Each topic's chance that this user finishes
its videos is Beta-distributed: a prior worth `prior` views at the topic's catalogue-wide completion
rate, updated by the user's own views and completions of it. Exploration slots go to the topics outside
the user's known interests with the highest draws, so that a topic the user keeps swiping loses its
turn and an untried one keeps being tried now and then."""

from __future__ import annotations

import numpy as np

from foryou.interest import TOPIC, UserState, code_of, kind_of


def known_topics(state: UserState, k: int) -> set[int]:
    """The user's `k` strongest positive topics."""
    topics = [(w, code_of(f)) for f, w in state.weights.items() if w > 0 and kind_of(f) == TOPIC]
    topics.sort(reverse=True)
    return {t for _, t in topics[:k]}


def explore_topics(state: UserState, topic_views: np.ndarray, topic_completions: np.ndarray, known: set[int],
                   k: int, prior: float, rng: np.random.Generator) -> list[int]:
    """Up to `k` topics to explore, best draw first. `topic_views`/`topic_completions`: catalogue-wide
    counts by topic code (topics with no items are skipped: their views array entry is -1)."""
    n = len(topic_views)
    if n == 0 or k <= 0:
        return []
    rate = (topic_completions + 1.0) / (np.maximum(topic_views, 0.0) + 2.0)
    alpha = prior * rate
    beta = prior * (1.0 - rate)
    for topic, (views, completions) in state.topic_views.items():
        if topic < n:
            alpha[topic] += completions
            beta[topic] += max(views - completions, 0.0)
    draws = rng.beta(np.maximum(alpha, 1e-3), np.maximum(beta, 1e-3))
    draws[topic_views < 0] = -1.0
    for topic in known:
        if topic < n:
            draws[topic] = -1.0
    order = np.argsort(-draws)[:k]
    return [int(t) for t in order if draws[t] >= 0]
