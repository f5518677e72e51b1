"""Time-decayed engagement per region ("trending in your region").

Scores are kept in units of a fixed reference time t0: an event at t adds `w * exp((t - t0) / tau)`,
so decay never touches the array, and ordering by stored score is ordering by decayed score."""

from __future__ import annotations

import math

import numpy as np

_REBASE_AT = 200.0  # exp(200) is far from float overflow, even summed over many events


class Trending:
    def __init__(self, regions: tuple[str, ...], tau_s: float, t0: float = 0.0) -> None:
        self.tau = tau_s
        self.t0 = t0
        self.scores = {r: np.zeros(1024) for r in regions}
        self.dirty: dict[str, set[int]] = {r: set() for r in regions}
        self._top: dict[str, tuple[float, np.ndarray, int]] = {}

    def ensure(self, size: int) -> None:
        for region, arr in self.scores.items():
            if len(arr) < size:
                grown = np.zeros(max(size, 2 * len(arr)))
                grown[: len(arr)] = arr
                self.scores[region] = grown

    def add(self, region: str, idx: int, weight: float, ts: float) -> None:
        if weight == 0.0:
            return
        if self.t0 == 0.0:
            self.t0 = ts
        if (ts - self.t0) / self.tau > _REBASE_AT:
            self._rebase(ts)
        exponent = (ts - self.t0) / self.tau
        arr = self.scores[region]
        if idx >= len(arr):
            self.ensure(idx + 1)
            arr = self.scores[region]
        arr[idx] += weight * math.exp(exponent)
        self.dirty[region].add(idx)

    def _rebase(self, ts: float) -> None:
        """Move the reference time to `ts` before scores overflow; their order is unchanged."""
        scale = math.exp(-(ts - self.t0) / self.tau)
        for region, arr in self.scores.items():
            arr *= scale
            self.dirty[region].update(np.flatnonzero(arr).tolist())
        self.t0 = ts

    def add_many(self, region: str, idx: np.ndarray, weights: np.ndarray, ts: np.ndarray) -> None:
        """`add` for arrays of events."""
        keep = weights != 0.0
        if not keep.any():
            return
        idx, weights, ts = idx[keep], weights[keep], ts[keep]
        if self.t0 == 0.0:
            self.t0 = float(ts[0])
        latest = float(ts.max())
        if (latest - self.t0) / self.tau > _REBASE_AT:
            self._rebase(latest)
        self.ensure(int(idx.max()) + 1)
        np.add.at(self.scores[region], idx, weights * np.exp((ts - self.t0) / self.tau))
        self.dirty[region].update(idx.tolist())

    def top(self, region: str, k: int, now: float, max_age_s: float = 2.0) -> np.ndarray:
        """The k highest-scoring item indexes, best first; recomputed at most every `max_age_s`."""
        cached = self._top.get(region)
        if cached is not None and now - cached[0] < max_age_s and cached[2] >= k:
            return cached[1][:k]
        keep = max(k, 1000)
        arr = self.scores[region]
        positive = np.flatnonzero(arr > 0)
        part = positive[np.argpartition(-arr[positive], keep)[:keep]] if len(positive) > keep else positive
        best = part[np.argsort(-arr[part], kind="stable")]
        self._top[region] = (now, best, keep)
        return best[:k]

    def current(self, idx: np.ndarray, now: float) -> np.ndarray:
        """Scores of items `idx` at `now`, summed over regions (negative totals count as 0)."""
        total = np.zeros(len(idx))
        for arr in self.scores.values():
            inside = idx < len(arr)
            total[inside] += arr[idx[inside]]
        return np.maximum(total, 0.0) * math.exp(-(now - self.t0) / self.tau)

    def invalidate(self) -> None:
        self._top.clear()
