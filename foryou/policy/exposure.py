"""Staged exposure of new videos ("traffic pools"). A new item joins pool 1 and is given reserved
slots until it has `first` impressions; then, after `eval_delay_s` for its views and actions to arrive,
its engagement per impression (completions, likes and shares, weighted as in the value) is compared
with its peers', the items that went through the same pool before it (while those are fewer than 3,
the others half through it now): at or above their `quantile` it is promoted to the next pool
(`growth` times larger), otherwise it is held back and competes on its own like any other item. After
the last pool it has graduated. The feed gives pool slots to users who finish the item's topic more
than most, so that the score measures the video rather than who happened to be shown it.

Each item's pool is one persisted counter column, coded: 0 none (an old item); k in pool k; k + 0.5
pool k filled, being evaluated; -k held after pool k; count + 1 graduated."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import orjson

from foryou.catalog import STATS, Catalog
from foryou.types import format_time

POOL, SERVED, VIEWS, FIRST = STATS["pool"], STATS["served"], STATS["views"], STATS["first_served"]
EARLY = STATS["early_swipes"]
_ENGAGED = (STATS["completions"], STATS["likes"], STATS["shares"])
_MIN_PEERS = 3  # an item is compared with at least this many others of its pool ...
_MAX_WAIT_S = 3600.0  # ... or, after waiting this long for them, with the catalogue's mean
_DIRECT = 1000  # pools up to this many items are ordered afresh at every request
_SCAN = 400  # pool items a request's filter looks at, at most


class Pools:
    def __init__(self, first: int = 300, growth: float = 10.0, count: int = 3, quantile: float = 0.5,
                 eval_delay_s: float = 60.0, max_age_s: float = 48 * 3600.0, within_s: float = 3600.0,
                 weights: tuple[float, float, float] = (1.0, 2.0, 4.0), window: int = 500,
                 expire_s: float = 14 * 86400.0) -> None:
        self.first = first
        self.growth = growth
        self.count = count
        self.quantile = quantile
        self.eval_delay_s = eval_delay_s
        self.max_age_s = max_age_s
        self.within_s = within_s
        self.weights = weights
        self.window = window
        self.expire_s = expire_s
        self._last_expiry = 0.0
        self.active: set[int] = set()  # in a pool, still short of its impressions
        self.evaluating: dict[int, float] = {}  # pool filled -> when
        self.reference: list[deque[float]] = [deque(maxlen=window) for _ in range(count)]
        # pool k's first impression is at starts[k] and it holds sizes[k] (index 0 unused)
        self._starts = np.asarray([self.threshold(k - 1) for k in range(count + 1)], np.float64)
        self._sizes = np.asarray([self.size(k) for k in range(count + 1)], np.float64)
        self._ordered: tuple[float, np.ndarray, np.ndarray] | None = None  # (when, items, urgent), for large pools

    def size(self, k: int) -> int:
        return max(1, round(self.first * self.growth ** (k - 1)))

    def threshold(self, k: int) -> int:
        """Impressions at which pool k is full (pools are cumulative)."""
        return sum(self.size(j) for j in range(1, k + 1))

    def score(self, catalog: Catalog, idx: np.ndarray) -> np.ndarray:
        """Engagement per view given a chance: weighted completions, likes and shares over the views
        that were not early swipes. Viewers to whom the topic means nothing swipe at once whatever the
        video; of those who stay past the first seconds, how many finish, like and share is what the
        video itself earns."""
        stats = catalog.stats
        engaged = sum(w * stats[idx, c] for w, c in zip(self.weights, _ENGAGED, strict=True))
        stayed = np.maximum(stats[idx, VIEWS] - stats[idx, EARLY], 1.0)
        return np.asarray(engaged / stayed, dtype=np.float64)

    # -- moving items through the pools --
    def load(self, catalog: Catalog, now: float) -> None:
        """Rebuild from the persisted pool counters (clamped to the pools configured now), and admit new
        items whose admission a crash lost before it was saved."""
        n, stats = len(catalog), catalog.stats
        codes = np.clip(stats[:n, POOL], -self.count, self.count + 1)
        stats[:n, POOL] = codes
        self.active = set(np.flatnonzero((codes >= 1) & (codes <= self.count) & (codes == np.floor(codes))).tolist())
        self.evaluating = {i: now for i in np.flatnonzero(codes != np.floor(codes)).tolist()}
        self.served(catalog, list(self.active), now)  # impressions replayed from the log may have filled some
        lost = (codes == 0) & (stats[:n, SERVED] == 0) & (catalog.created_at[:n] >= now - self.max_age_s)
        self.admit(catalog, np.flatnonzero(lost & catalog.alive[:n]).tolist(), now)

    def admit(self, catalog: Catalog, idxs: list[int], now: float) -> list[int]:
        """New items created within `max_age_s` join pool 1; returns those that did."""
        stats, joined = catalog.stats, []
        for i in idxs:
            if stats[i, POOL] == 0 and stats[i, SERVED] == 0 and catalog.created_at[i] >= now - self.max_age_s:
                stats[i, POOL] = 1
                self.active.add(i)
                joined.append(i)
        return joined

    def served(self, catalog: Catalog, idxs: list[int], now: float) -> None:
        """Count impressions (after `catalog.stats` was incremented): full pools go to evaluation."""
        stats = catalog.stats
        for i in idxs:
            if i not in self.active:
                continue
            if stats[i, FIRST] == 0 and stats[i, SERVED] > 0:
                stats[i, FIRST] = now
            k = int(stats[i, POOL])
            if stats[i, SERVED] >= self.threshold(k):
                stats[i, POOL] = k + 0.5
                self.active.discard(i)
                self.evaluating[i] = now

    def sync(self, catalog: Catalog, idx: np.ndarray) -> None:
        """Items `idx`' pool codes were set by their writer (a server takes the trainer's): which of
        them are in a pool, still short of their impressions, follows."""
        codes = catalog.stats[idx, POOL]
        active = (codes >= 1) & (codes <= self.count) & (codes == np.floor(codes))
        self.active.difference_update(idx[~active].tolist())
        self.active.update(idx[active].tolist())

    def _peers(self, catalog: Catalog, k: int, item: int) -> list[float]:
        """The scores to compare an item of pool k with: the items that finished pool k before it, and
        while those are few, the others in pool k that have at least half of its impressions."""
        reference = list(self.reference[k - 1])
        if len(reference) >= _MIN_PEERS:
            return reference
        stats, half = catalog.stats, self.threshold(k - 1) + self.size(k) / 2
        others = [i for i in (*self.active, *self.evaluating)
                  if i != item and int(stats[i, POOL]) == k and stats[i, SERVED] >= half]
        return reference + self.score(catalog, np.asarray(others, np.int64)).tolist()

    def tick(self, catalog: Catalog, now: float, totals: np.ndarray) -> list[int]:
        """Decide the items whose evaluation delay has passed; returns them (their counters changed).
        An item is promoted when its score is at least the `quantile` of its peers' (items of its age:
        those that went through the same pool); one without enough peers waits up to `_MAX_WAIT_S`
        for them, then is compared with the catalogue's mean engagement per impression."""
        expired = self._expire(catalog, now) if now - self._last_expiry >= 60.0 else []
        due = [i for i, t in self.evaluating.items() if now - t >= self.eval_delay_s]
        if not due:
            return expired
        catalogue_bar = float(sum(w * totals[c] for w, c in zip(self.weights, _ENGAGED, strict=True))
                              / max(float(totals[VIEWS] - totals[EARLY]), 1.0))
        scores = self.score(catalog, np.asarray(due, np.int64))
        stats = catalog.stats
        decided = []
        for i, score in zip(due, scores.tolist(), strict=True):
            k = int(stats[i, POOL])
            peers = self._peers(catalog, k, i)
            if len(peers) < _MIN_PEERS and now - self.evaluating[i] < _MAX_WAIT_S:
                continue
            del self.evaluating[i]
            decided.append(i)
            bar = float(np.quantile(peers, self.quantile)) if len(peers) >= _MIN_PEERS else catalogue_bar
            self.reference[k - 1].append(score)
            if score < bar:
                stats[i, POOL] = -k
            elif k < self.count:
                stats[i, POOL] = k + 1
                self.active.add(i)
            else:
                stats[i, POOL] = self.count + 1
        return expired + decided

    def _expire(self, catalog: Catalog, now: float) -> list[int]:
        """Items still short of their pool `expire_s` after upload had their chance: held, so that the
        set of pool items does not grow with uploads that find no audience (checked once a minute)."""
        self._last_expiry = now
        stats, cutoff = catalog.stats, now - self.expire_s
        old = [i for i in self.active if catalog.created_at[i] < cutoff]
        for i in old:
            self.active.discard(i)
            stats[i, POOL] = -int(stats[i, POOL])
        return old

    # -- serving --
    def candidates(self, catalog: Catalog, keep: Callable[[np.ndarray], np.ndarray], now: float,
                   limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to `limit` pool items that `keep` allows, and a priority for each: 1 for an item waiting for
        its first impression for over half of `within_s` (these first), else 0; then the least advanced
        in their pool first, then the oldest. `keep` (the user's filter, the costliest step) sees the
        items in that order a few at a time, at most `_SCAN` of them, whatever the pools hold."""
        if not self.active:
            return np.zeros(0, np.int64), np.zeros(0)
        order, urgent = self._order(catalog, now)
        picked: list[np.ndarray] = []
        flags: list[np.ndarray] = []
        found, chunk = 0, 4 * limit
        for lo in range(0, min(len(order), _SCAN), chunk):
            idx = order[lo:lo + chunk]
            live = np.fromiter((i in self.active for i in idx.tolist()), np.bool_, len(idx))  # the order may lag
            ok = live.copy()
            ok[live] = keep(idx[live])
            picked.append(idx[ok][:limit - found])
            flags.append(urgent[lo:lo + chunk][ok][:limit - found])
            found += len(picked[-1])
            if found >= limit:
                break
        return np.concatenate(picked), np.concatenate(flags).astype(np.float64)

    def _order(self, catalog: Catalog, now: float) -> tuple[np.ndarray, np.ndarray]:
        """The active items best first, with their urgency: computed afresh while the pools are small,
        else at most once a second (so that a request's cost does not grow with the pools)."""
        if len(self.active) > _DIRECT and self._ordered is not None and now - self._ordered[0] < 1.0:
            return self._ordered[1], self._ordered[2]
        idx = np.fromiter(self.active, np.int64, len(self.active))
        stats = catalog.stats
        codes = stats[idx, POOL].astype(np.int64)
        progress = (stats[idx, SERVED] - self._starts[codes]) / self._sizes[codes]
        urgent = (stats[idx, FIRST] == 0) & (now - catalog.created_at[idx] > self.within_s / 2)
        order = np.lexsort((catalog.created_at[idx], progress, ~urgent))
        self._ordered = (now, idx[order], urgent[order])
        return idx[order], urgent[order]

    def exposure(self, catalog: Catalog, idx: int) -> dict[str, object]:
        """An item's exposure by pool, for `GET /v1/items/{id}`."""
        code = float(catalog.stats[idx, POOL])
        served = float(catalog.stats[idx, SERVED])
        first = float(catalog.stats[idx, FIRST])
        if code == 0:
            k, status = 0, "none"
        elif code < 0:
            k, status = int(-code), "held"
        elif code != int(code):
            k, status = int(code), "evaluating"
        elif code > self.count:
            k, status = self.count, "graduated"
        else:
            k = int(code)
            status = "waiting" if served < self.threshold(k - 1) + 1 and first == 0 else "in_pool"
        pools = []
        for j in range(1, k + 1):
            outcome = "promoted" if j < k or status == "graduated" else ("held" if status == "held" else None)
            pools.append({"pool": j, "size": self.size(j), "outcome": outcome,
                          "served": int(min(max(served - self.threshold(j - 1), 0), self.size(j)))})
        return {"pool": k, "status": status, "first_served_at": format_time(first) if first else None,
                "score": round(float(self.score(catalog, np.asarray([idx]))[0]), 6) if served else None,
                "pools": pools}

    # -- persistence of the reference scores (the counters persist with the item's) --
    def dumps(self) -> str:
        return orjson.dumps([list(r) for r in self.reference]).decode()

    def loads(self, text: str | None) -> None:
        if text:
            for ref, saved in zip(self.reference, orjson.loads(text), strict=False):
                ref.extend(saved)
