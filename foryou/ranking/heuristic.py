"""The hand-set estimators: each item's smoothed historical rate of an action, shifted in logit space
by how well the item matches the user. They stay as the fallback and baseline for learned models."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from foryou.catalog import STATS, Catalog
from foryou.config import ValueWeights
from foryou.interest import CREATOR, SOUND, TOPIC, UserState

HEADS = ("complete", "like", "comment", "share", "follow")
_COLUMN = {"complete": STATS["completions"], "like": STATS["likes"], "comment": STATS["comments"],
           "share": STATS["shares"], "follow": STATS["follows"]}
# Rates an item with no history starts from (before the catalogue has any).
_DEFAULT_RATE = {"complete": 0.3, "like": 0.03, "comment": 0.005, "share": 0.003, "follow": 0.002}
# How strongly a user's affinity moves each head, in logits.
_AFFINITY_GAIN = {"complete": 2.0, "like": 1.5, "comment": 1.2, "share": 1.2, "follow": 1.0}
_FOLLOWED_GAIN = {"complete": 0.5, "like": 0.5, "comment": 0.5, "share": 0.3, "follow": -3.0}
MIN_VALUE = 1e-3  # the learned value's floor before its log (negative weights can take sums below 0)
_PRIOR_VIEWS = 20.0  # pseudo-views that pull an item's rate towards the catalogue's


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def affinity(catalog: Catalog, state: UserState, candidates: np.ndarray, scale: float) -> np.ndarray:
    """How well each candidate matches the user's decayed interests, squashed into (-1, 1): the sum of
    the user's weights on the item's features, as `interest.item_features` shares them out (ranking
    looks at the first `RANK_TAGS` tags). Vectorised: a sorted lookup of candidate features."""
    weights = state.weights
    raw = np.zeros(len(candidates))
    if not weights or len(candidates) == 0:
        return raw
    keys = np.fromiter(weights.keys(), np.int64, len(weights))
    values = np.fromiter(weights.values(), np.float64, len(weights))
    order = np.argsort(keys)
    keys, values = keys[order], values[order]

    def lookup(features: np.ndarray, codes: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(keys, features), len(keys) - 1)
        return np.where((keys[pos] == features) & (codes >= 0), values[pos], 0.0)

    tags = catalog.tag_cols[candidates]
    share = 1.0 / np.sqrt(np.maximum(catalog.tag_count[candidates], 1).astype(np.float64))
    for j in range(tags.shape[1]):
        raw += lookup(tags[:, j], tags[:, j]) * share  # TAG is kind 0: the code is the feature
    for kind, column, gain in ((TOPIC, catalog.topic, 1.0), (CREATOR, catalog.creator, 0.8),
                               (SOUND, catalog.sound, 0.5)):
        codes = column[candidates].astype(np.int64)
        raw += gain * lookup((kind << 32) | codes, codes)
    return np.tanh(raw * scale / 4.0)


class HeuristicRanker:
    """Predicts P(action) per head for candidates. `predict` is pure over the given arrays."""

    def __init__(self, prior_views: float = _PRIOR_VIEWS) -> None:
        self.prior_views = prior_views

    def predict(self, catalog: Catalog, state: UserState, candidates: np.ndarray, decay: float,
                totals: np.ndarray) -> dict[str, np.ndarray]:
        """`totals`: the catalogue's column sums of `catalog.stats` (may be a few seconds old)."""
        stats = catalog.stats
        total_views = float(totals[STATS["views"]])
        views = stats[candidates, STATS["views"]]
        aff = affinity(catalog, state, candidates, decay)
        followed = np.isin(catalog.creator[candidates], np.fromiter(state.follows, np.int64, len(state.follows)))
        out: dict[str, np.ndarray] = {}
        for head in HEADS:
            col = _COLUMN[head]
            base = (float(totals[col]) + _DEFAULT_RATE[head] * 50) / (total_views + 50)
            rate = (stats[candidates, col] + self.prior_views * base) / (views + self.prior_views)
            out[head] = _sigmoid(_logit(rate) + _AFFINITY_GAIN[head] * aff + _FOLLOWED_GAIN[head] * followed)
        out["affinity"] = aff
        return out


VALUED = (*HEADS, "watch", "skip")


def value(predictions: Mapping[str, np.ndarray], weights: ValueWeights) -> np.ndarray:
    """Sum over the predicted heads of P(action) x weight(action) (the learned model adds the watch
    quantile and P(skip)). The learned model's value is on a log scale: log of that sum, plus its
    retrieval score (a log-likelihood of engagement, popularity included) times `weights.retrieval`,
    i.e. the sum times the likelihood raised to that power."""
    total = np.zeros_like(predictions["complete"])
    for head in VALUED:
        if head in predictions:
            total += predictions[head] * float(getattr(weights, head))
    if "retrieval" in predictions:
        return np.log(np.maximum(total, MIN_VALUE)) + weights.retrieval * predictions["retrieval"]
    return total
