"""Exploration: a Thompson-sampling bandit over topics. Each topic's chance that this user finishes
its videos is Beta-distributed: a prior worth `prior` views at the topic's catalogue-wide completion
rate, updated by the user's own views and completions of it. Exploration slots go to the topics outside
the user's known interests with the highest draws, so that a topic the user keeps swiping loses its
turn and an untried one keeps being tried now and then."""

from __future__ import annotations

import numpy as np

from foryou.interest import TOPIC, UserState, code_of, kind_of

_PRIOR_VIEWS = 10.0  # a topic's catalogue-wide rate is shrunk towards the overall one by this many views
_DEFAULT_RATE = 0.3  # the overall completion rate before any view
MAX_LIFT = 3.0  # bounds the topic lift either way (a draw near 0 must not outweigh everything else)


def known_topics(state: UserState, k: int) -> set[int]:
    """The user's `k` strongest positive topics."""
    topics = [(w, code_of(f)) for f, w in state.weights.items() if w > 0 and kind_of(f) == TOPIC]
    topics.sort(reverse=True)
    return {t for _, t in topics[:k]}


def posterior(state: UserState, topic_views: np.ndarray, topic_completions: np.ndarray,
              prior: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Beta posterior of this user's completion rate per topic code: (alpha, beta, the prior's mean:
    the topic's catalogue-wide completion rate). `topic_views`/`topic_completions`: catalogue-wide
    counts by topic code."""
    views = np.maximum(topic_views, 0.0)
    overall = (topic_completions.sum() + _PRIOR_VIEWS * _DEFAULT_RATE) / (views.sum() + _PRIOR_VIEWS)
    rate = (topic_completions + _PRIOR_VIEWS * overall) / (views + _PRIOR_VIEWS)  # shrunk to the overall rate
    alpha = prior * rate
    beta = prior * (1.0 - rate)
    seen = state.topic_views
    mine = seen.codes < len(rate)
    codes, counts = seen.codes[mine], seen.counts[mine]  # codes are distinct: no repeated index
    alpha[codes] += counts[:, 1]
    beta[codes] += np.maximum(counts[:, 0] - counts[:, 1], 0.0)
    return np.maximum(alpha, 1e-3), np.maximum(beta, 1e-3), rate


def topic_lift(state: UserState, topic_views: np.ndarray, topic_completions: np.ndarray, prior: float,
               topics: np.ndarray) -> np.ndarray:
    """For items of the given topic codes: log(the user's posterior mean completion rate of the topic /
    the topic's catalogue-wide rate), bounded by `MAX_LIFT`; 0 for items without a topic. The bandit's
    exploitation side: sharp after a few views (a topic finished twice in two views is lifted well
    above its rate), and a topic the user swipes sinks below it. (Drawing here instead of taking the
    mean would explore in every slot: among many topics, some untried one always draws high.)"""
    out = np.zeros(len(topics))
    if not state.topic_views or len(topic_views) == 0:
        return out
    alpha, beta, rate = posterior(state, topic_views, topic_completions, prior)
    has = (topics >= 0) & (topics < len(rate))
    codes = topics[has]
    out[has] = np.clip(np.log(alpha[codes] / (alpha[codes] + beta[codes])) - np.log(rate[codes]), -MAX_LIFT, MAX_LIFT)
    return out


def explore_topics(state: UserState, topic_views: np.ndarray, topic_completions: np.ndarray, known: set[int],
                   k: int, prior: float, rng: np.random.Generator) -> list[int]:
    """Up to `k` topics to explore, best draw first. `topic_views`/`topic_completions`: catalogue-wide
    counts by topic code (topics with no items are skipped: their views array entry is -1)."""
    n = len(topic_views)
    if n == 0 or k <= 0:
        return []
    alpha, beta, _ = posterior(state, topic_views, topic_completions, prior)
    draws = rng.beta(alpha, beta)
    draws[topic_views < 0] = -1.0
    for topic in known:
        if topic < n:
            draws[topic] = -1.0
    order = np.argsort(-draws)[:k]
    return [int(t) for t in order if draws[t] >= 0]
