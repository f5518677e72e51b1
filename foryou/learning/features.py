"""Features and labels of the learned models, as pure functions over the catalogue's columns.

Watch time is debiased as in Kuaishou's D2Q (KDD 2022): longer videos are watched longer, so a raw
watch time mostly measures duration. Each view's label is instead the quantile of its watch ratio among
views of videos in the same duration bucket, which is comparable across durations; the predicted
quantile maps back to seconds through the bucket's distribution.
"""

from __future__ import annotations

import numpy as np

from foryou.catalog import STATS, Catalog

HEADS = ("complete", "watch", "like", "comment", "share", "follow", "skip")
HEAD = {h: i for i, h in enumerate(HEADS)}
VIEW_HEADS = (HEAD["complete"], HEAD["watch"], HEAD["skip"])  # known the moment a view arrives
ACTION_HEADS = {"like": HEAD["like"], "comment": HEAD["comment"], "share": HEAD["share"],
                "follow": HEAD["follow"]}  # known only after the join window

DURATION_EDGES = np.array([5.0, 8.0, 11.0, 15.0, 20.0, 30.0, 60.0])  # seconds: 8 buckets
AGE_EDGES_H = np.array([1.0, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0])  # hours since created_at: 8 buckets
RATIO_BINS = 40
MAX_RATIO = 2.0  # watch ratios above (loops) share the last bin
_RATE_COLUMNS = ("completions", "likes", "comments", "shares", "follows", "early_swipes")
_PRIOR_VIEWS = 20.0
N_DENSE = 2 + len(_RATE_COLUMNS) + len(DURATION_EDGES) + 1 + len(AGE_EDGES_H) + 1


_POSITIVE_COLUMNS = [STATS[c] for c in ("completions", "likes", "comments", "shares", "follows")]
_RATE_STATS = [STATS[c] for c in _RATE_COLUMNS]


def popularity(catalog: Catalog, idx: np.ndarray, trend: np.ndarray) -> np.ndarray:
    """Each item's popularity as the retrieval model sees it: log(1 + positives ever) and
    log(1 + engagement in the last hours, decayed), given the items' `trend` scores. Shape (n, 2)."""
    positives = catalog.stats[idx][:, _POSITIVE_COLUMNS].sum(axis=1)
    return np.stack([np.log1p(positives), np.log1p(trend)], axis=1).astype(np.float32)


def duration_bucket(duration_s: np.ndarray) -> np.ndarray:
    return np.searchsorted(DURATION_EDGES, duration_s, side="right")


def dense(catalog: Catalog, idx: np.ndarray, now: float, totals: np.ndarray) -> np.ndarray:
    """Item-side features of the catalogue items `idx` at `now`: a constant, log views, smoothed
    action rates (as logits), duration bucket and age bucket (one-hot). Shape (len(idx), N_DENSE)."""
    stats = catalog.stats[idx]
    views = stats[:, STATS["views"]]
    total_views = max(float(totals[STATS["views"]]), 1.0)
    out = np.zeros((len(idx), N_DENSE), np.float32)
    out[:, 0] = 1.0
    out[:, 1] = np.log1p(views) / 8.0
    # every rate at once: a feed ranks some 600 candidates, where a numpy call's overhead is most of its cost
    base = (totals[_RATE_STATS].astype(np.float64) + 0.01) / (total_views + 1.0)
    rate = np.clip((stats[:, _RATE_STATS] + _PRIOR_VIEWS * base) / (views + _PRIOR_VIEWS)[:, None], 1e-4, 1 - 1e-4)
    out[:, 2:2 + len(_RATE_COLUMNS)] = np.log(rate / (1 - rate)) / 4.0
    at = 2 + len(_RATE_COLUMNS)
    out[np.arange(len(idx)), at + duration_bucket(catalog.duration[idx])] = 1.0
    at += len(DURATION_EDGES) + 1
    age_h = np.maximum(now - catalog.created_at[idx], 0.0) / 3600.0
    out[np.arange(len(idx)), at + np.searchsorted(AGE_EDGES_H, age_h, side="right")] = 1.0
    return out


class WatchQuantiles:
    """Per duration bucket, the distribution of watch ratios (a histogram learned online)."""

    def __init__(self) -> None:
        self.counts = np.ones((len(DURATION_EDGES) + 1, RATIO_BINS))  # a flat prior of one view a bin

    def _bins(self, watch_s: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
        ratio = np.clip(watch_s / np.maximum(duration_s, 1e-3), 0.0, MAX_RATIO)
        return np.minimum((ratio / MAX_RATIO * RATIO_BINS).astype(np.int64), RATIO_BINS - 1)

    def learn_many(self, watch_s: np.ndarray, duration_s: np.ndarray) -> None:
        np.add.at(self.counts, (duration_bucket(duration_s), self._bins(watch_s, duration_s)), 1.0)

    def label(self, watch_s: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
        """The quantile of each view's watch ratio within its duration bucket, in (0, 1)."""
        buckets, bins = duration_bucket(duration_s), self._bins(watch_s, duration_s)
        counts = self.counts[buckets]
        below = np.cumsum(counts, axis=1)[np.arange(len(bins)), bins] - counts[np.arange(len(bins)), bins] / 2
        return below / counts.sum(axis=1)

    def watch_s(self, quantile: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
        """Expected seconds watched for a predicted quantile: the bucket's inverse distribution."""
        buckets = duration_bucket(duration_s)
        cdf = np.cumsum(self.counts[buckets], axis=1)
        cdf /= cdf[:, -1:]
        bins = np.array([np.searchsorted(c, q) for c, q in zip(cdf, quantile, strict=True)], np.int64)
        ratio = (np.minimum(bins, RATIO_BINS - 1) + 0.5) / RATIO_BINS * MAX_RATIO
        return ratio * duration_s
