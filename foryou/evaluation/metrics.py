"""Ranking and classification metrics, as pure functions over arrays (one row per user).

Ranking metrics take `hits`, a boolean matrix whose row u says which of user u's ranked items (best
first) are relevant, and `n_relevant`, how many relevant items user u has in all:

>>> hits = np.array([[False, True, False]])
>>> float(ndcg_at_k(hits, np.array([1]), 3)[0])  # one relevant item, at rank 2: 1/log2(3)
0.6309...
>>> float(recall_at_k(hits, np.array([2]), 3)[0]), float(hit_rate_at_k(hits, 1)[0])
(0.5, 0.0)
"""

from __future__ import annotations

import numpy as np


def hit_matrix(ranked: np.ndarray, rel_rows: np.ndarray, rel_items: np.ndarray, n_items: int) -> np.ndarray:
    """hits[u, j]: whether ranked[u, j] is among user u's relevant items, given as pairs
    (rel_rows[p], rel_items[p]) of a row of `ranked` and an item index."""
    rows = np.arange(ranked.shape[0], dtype=np.int64)[:, None]
    codes = rows * n_items + ranked.astype(np.int64)
    relevant = np.asarray(rel_rows, dtype=np.int64) * n_items + np.asarray(rel_items, dtype=np.int64)
    return np.isin(codes, relevant)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG@k per user: DCG of the top k over the DCG of an ideal top k."""
    discounts = _discounts(k)
    top = hits[:, :k]
    dcg = (top * discounts[: top.shape[1]]).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(n_relevant, k)]
    out: np.ndarray = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
    return out


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Share of the user's relevant items found in the top k."""
    found = hits[:, :k].sum(axis=1).astype(np.float64)
    out: np.ndarray = np.divide(found, n_relevant, out=np.zeros_like(found), where=n_relevant > 0)
    return out


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 where the top k holds at least one relevant item, else 0."""
    return np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)


def coverage(ranked: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's top k."""
    if n_items == 0:
        return 0.0
    return len(np.unique(ranked[:, :k])) / n_items


def group_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUC, size) of each group (in order of group value): the probability that a positive outranks a
    negative of the same group, ties counting one half (Mann-Whitney); NaN for a group lacking positives
    or negatives. Vectorised: one sort, ranks averaged over ties."""
    n = len(scores)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order].astype(np.float64)
    pos = np.arange(n)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
    tie_first = pos[new_tie]
    tie_last = np.r_[tie_first[1:], n] - 1
    tie = np.cumsum(new_tie) - 1
    rank = (tie_first[tie] + tie_last[tie]) / 2.0 - group_start + 1.0
    group = np.cumsum(new_group) - 1
    size = np.bincount(group).astype(np.float64)
    n_pos = np.bincount(group, weights=y)
    n_neg = size - n_pos
    u = np.bincount(group, weights=rank * y) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    return auc, size


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC; NaN when the labels are all one class."""
    value, _ = group_auc(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool),
                         np.zeros(len(scores), dtype=np.int64))
    return float(value[0]) if len(value) else float("nan")


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: the mean of per-group (per-user) AUCs weighted by group size, over the groups that
    have both positives and negatives; NaN when none has."""
    values, sizes = group_auc(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool),
                              np.asarray(groups, dtype=np.int64))
    ok = ~np.isnan(values)
    if not ok.any():
        return float("nan")
    return float((values[ok] * sizes[ok]).sum() / sizes[ok].sum())


def calibration_error(predicted: np.ndarray, observed: np.ndarray, counts: np.ndarray) -> float:
    """Expected calibration error of `calibration`'s bins: the count-weighted mean of
    |mean predicted - observed rate|. NaN without bins."""
    total = float(np.sum(counts))
    return float(np.sum(np.abs(predicted - observed) * counts) / total) if total else float("nan")


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed rate, count) per bin of equal count (quantiles of the predictions);
    empty bins are dropped."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(probs, kind="stable")
    parts = [p for p in np.array_split(order, min(bins, len(order))) if len(p)]
    y = np.asarray(labels, dtype=np.float64)
    return (np.array([probs[p].mean() for p in parts]), np.array([y[p].mean() for p in parts]),
            np.array([len(p) for p in parts], dtype=np.float64))
