"""Time-decayed engagement per region ("trending in your region").

Scores are kept in units of a fixed reference time t0: an event at t adds `w * exp((t - t0) / tau)`,
so decay never touches the array, and ordering by stored score is ordering by decayed score."""

from __future__ import annotations

import math

import numpy as np


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
        exponent = (ts - self.t0) / self.tau
        if exponent > 200.0:  # rebase before float overflow; the order of scores is unchanged
            for arr in self.scores.values():
                arr *= math.exp(-exponent)
            self.t0, exponent = ts, 0.0
            for r in self.dirty:
                self.dirty[r].update(np.flatnonzero(self.scores[r]).tolist())
        arr = self.scores[region]
        if idx >= len(arr):
            self.ensure(idx + 1)
            arr = self.scores[region]
        arr[idx] += weight * math.exp(exponent)
        self.dirty[region].add(idx)

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

    def invalidate(self) -> None:
        self._top.clear()
