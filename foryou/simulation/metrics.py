"""The simulator's metrics, as pure functions over arrays (no I/O, no engine):

>>> views_until(np.array([0, 0, 1, 1, 1, 1], bool), target=0.75, window=4)  # views 2-5: 3 of 4
5
>>> longest_run([3, 3, 1, 1, 1, 2])
3
>>> round(gini(np.array([1.0, 1.0, 1.0, 1.0])), 6), round(gini(np.array([0.0, 0.0, 0.0, 8.0])), 6)
(0.0, 0.75)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WINDOW = 20  # views in the trailing window of "views until the feed reaches a share"


def by_user(users: np.ndarray, positions: np.ndarray, values: np.ndarray, n_users: int, views: int) -> np.ndarray:
    """A (user, view number) matrix of `values`, NaN where a user has no such view."""
    out = np.full((n_users, views), np.nan)
    out[users, positions - 1] = values
    return out


def views_until(on: np.ndarray, target: float, window: int = WINDOW) -> int | None:
    """The first view number (from 1) at which the share of on-interest views among the trailing
    `window` reaches `target`; a full window is needed (one lucky first view is not a feed that learned).
    None when it never does."""
    on = np.asarray(on, dtype=np.float64)
    if len(on) < window:
        return None
    sums = np.convolve(on, np.ones(window), mode="valid")  # sums[i]: views i+1 .. i+window
    hits = np.flatnonzero(sums >= target * window - 1e-9)
    return int(hits[0]) + window if len(hits) else None


def median_or_none(values: Sequence[int | None]) -> float | None:
    """The median, counting None as "never" (larger than any number); None if the median is never."""
    if not values:
        return None
    ordered = sorted(np.inf if v is None else float(v) for v in values)
    median = float(np.median(ordered))
    return None if np.isinf(median) else median


def window_share(matrix: np.ndarray, first: int, last: int) -> float | None:
    """Mean over users of each user's mean over view numbers `first`..`last` (from 1; NaN ignored)."""
    part = matrix[:, first - 1:last]
    seen = ~np.isnan(part)
    counts = seen.sum(axis=1)
    if not counts.any():
        return None
    per_user = np.nansum(part, axis=1)[counts > 0] / counts[counts > 0]
    return float(per_user.mean())


def share_curve(matrix: np.ndarray) -> np.ndarray:
    """Mean over users at each view number (NaN where nobody got that far)."""
    seen = ~np.isnan(matrix)
    counts = seen.sum(axis=0)
    return np.divide(np.nansum(matrix, axis=0), counts, out=np.full(matrix.shape[1], np.nan), where=counts > 0)


def entropy_bits(labels: Sequence[int] | np.ndarray) -> float:
    """Shannon entropy, in bits, of the distribution of `labels` (0 for one label or none)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum() + 0.0)


def longest_run(labels: Sequence[int] | np.ndarray) -> int:
    """The longest stretch of equal consecutive labels."""
    values = np.asarray(labels)
    if len(values) == 0:
        return 0
    breaks = np.flatnonzero(values[1:] != values[:-1]) + 1
    edges = np.concatenate([[0], breaks, [len(values)]])
    return int(np.diff(edges).max())


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 when all are equal, (n-1)/n when one has everything."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * x).sum()) / (n * total) - (n + 1) / n)


def lorenz(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Lorenz curve: (share of holders, poorest first; their share of the total), from (0, 0)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    total = x.sum() or 1.0
    return np.linspace(0.0, 1.0, len(x) + 1), np.concatenate([[0.0], np.cumsum(x) / total])


def coverage(served: np.ndarray, n_items: int) -> float:
    """The share of the `n_items` catalogue served at least once."""
    return float(len(np.unique(served)) / n_items) if n_items else 0.0


def nth_after(times: np.ndarray, since: float, n: int) -> float | None:
    """Time from `since` to the `n`-th of `times` (from 1), or None when there are fewer."""
    if n < 1 or len(times) < n:
        return None
    return float(np.sort(times)[n - 1] - since)


def summary(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """{"median", "max"} of the values that exist, and how many do not ("missing")."""
    present = [v for v in values if v is not None]
    return {"median": float(np.median(present)) if present else None,
            "max": float(max(present)) if present else None,
            "missing": len(values) - len(present)}
