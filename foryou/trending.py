"""Time-decayed engagement per region ("trending in your region").

Scores are kept in units of a fixed reference time t0: an event at t adds `w * exp((t - t0) / tau)`,
so decay never touches the array, and ordering by stored score is ordering by decayed score.

The top list is kept incrementally: it is recomputed from the last list (kept twice as long as asked
for) and the items whose scores changed since, which is exact unless too many of the listed items fell
(scores fall only on early swipes): then, and only then, the whole array is read again."""

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
        # region -> (computed at, the best items (2 x keep of them, best first), keep, a bound on the
        # score of every item not listed); and the items whose scores changed since
        self._top: dict[str, tuple[float, np.ndarray, int, float]] = {}
        self._changed: dict[str, list[np.ndarray]] = {r: [] for r in regions}
        self._changed_count: dict[str, int] = {}

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
        self._note_changed(region, np.array([idx], np.int64))

    def _rebase(self, ts: float) -> None:
        """Move the reference time to `ts` before scores overflow; their order is unchanged."""
        scale = math.exp(-(ts - self.t0) / self.tau)
        for region, arr in self.scores.items():
            arr *= scale
            self.dirty[region].update(np.flatnonzero(arr).tolist())
        self.t0 = ts
        self._top = {r: (at, best, keep, bound * scale) for r, (at, best, keep, bound) in self._top.items()}

    def rebase_to(self, t0: float) -> None:
        """Express the scores in units of reference time `t0` (a writer's, whose scores are put here)."""
        if self.t0 == 0.0:
            self.t0 = t0
        else:
            self._rebase(t0)

    def put(self, region: str, idx: np.ndarray, scores: np.ndarray) -> None:
        """Set the scores of items `idx` (as their writer has them, in units of this `t0`)."""
        if not len(idx):
            return
        self.ensure(int(idx.max()) + 1)
        self.scores[region][idx] = scores
        self._note_changed(region, idx.astype(np.int64))

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
        self._note_changed(region, idx.astype(np.int64))

    def _note_changed(self, region: str, idx: np.ndarray) -> None:
        """Remember the items whose scores changed since the top list was made; past an eighth of the
        array (a region with events and no feeds), the list is dropped: the next one is a full pass."""
        changed = self._changed[region]
        changed.append(idx)
        self._changed_count[region] = self._changed_count.get(region, 0) + len(idx)
        if self._changed_count[region] > len(self.scores[region]) // 8:
            changed.clear()
            self._changed_count[region] = 0
            self._top.pop(region, None)

    def top(self, region: str, k: int, now: float, max_age_s: float = 2.0) -> np.ndarray:
        """The k highest-scoring item indexes, best first; recomputed at most every `max_age_s`."""
        cached = self._top.get(region)
        if cached is not None and now - cached[0] < max_age_s and cached[2] >= k:
            return cached[1][:k]
        keep = max(k, 1000)
        arr, changed = self.scores[region], self._changed[region]
        if cached is not None and cached[2] >= keep:
            pool = np.unique(np.concatenate([cached[1], *changed]))
            best, bound = _best(arr, pool, 2 * keep)
            bound = max(bound, cached[3])  # an item listed in neither scores at most this
            if bound > 0 and (len(best) < keep or arr[best[keep - 1]] <= bound):  # listed items fell: a full pass
                best, bound = _best(arr, np.flatnonzero(arr > 0), 2 * keep)
        else:
            best, bound = _best(arr, np.flatnonzero(arr > 0), 2 * keep)
        changed.clear()
        self._changed_count[region] = 0
        self._top[region] = (now, best, keep, bound)
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
        for changed in self._changed.values():
            changed.clear()
        self._changed_count.clear()


def _best(arr: np.ndarray, pool: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """The (at most) `n` items of `pool` with the highest positive scores, best first, and a bound on
    the score of every item of `pool` left out (0 when none with a positive score is)."""
    pool = pool[arr[pool] > 0]
    bound = 0.0
    if len(pool) > n:
        part = np.argpartition(-arr[pool], n)
        bound = float(arr[pool[part[n]]])  # the best left out: every other left out scores at most this
        pool = pool[part[:n]]
    return pool[np.argsort(-arr[pool], kind="stable")], bound
