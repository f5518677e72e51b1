"""The candidate sources of the engine (exploration's topics come from policy/explore.py), a random
fallback, and the sweep that keeps a feed from running dry while eligible items remain, a bounded
stretch of the catalogue per request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from foryou.catalog import Catalog
from foryou.interest import CREATOR, SOUND, TAG, TOPIC, UserState, code_of, key, kind_of
from foryou.seen import Seen


class Candidates:
    """Merged proposals: item index -> the sources (and interest features) that proposed it."""

    def __init__(self, excluded: Seen) -> None:
        self.excluded = excluded
        # Sources propose a few dozen items a call, a score of calls a feed: a Python set answers each
        # look-up in ~30 ns, where asking the compact array costs a numpy call per proposal list
        # (+0.5 ms a feed at 1M items). Built once a request, from the array.
        self._skip = set(excluded)
        self.sources: dict[int, list[tuple[str, int]]] = {}

    def add(self, idxs: Iterable[int] | np.ndarray, source: str, feature: int = -1, budget: int = 10**9) -> int:
        """Propose items in order until `budget` new ones were added; returns how many were."""
        added = 0
        skip, sources = self._skip, self.sources
        tag = (source, feature)
        for idx in idxs.tolist() if isinstance(idxs, np.ndarray) else idxs:
            if idx in skip:
                continue
            entry = sources.get(idx)
            if entry is None:
                sources[idx] = [tag]
                added += 1
                if added >= budget:
                    break
            elif entry[-1][0] != source:
                entry.append(tag)
        return added

    def __len__(self) -> int:
        return len(self.sources)


def _postings(catalog: Catalog, feature: int) -> list[int]:
    kind, code = kind_of(feature), code_of(feature)
    table = {TAG: catalog.by_tag, TOPIC: catalog.by_topic, CREATOR: catalog.by_creator,
             SOUND: catalog.by_sound}[kind]
    return table.get(code, [])


def _window(postings: list[int], start: int, limit: int) -> list[int]:
    """Up to `limit` entries from offset `start`, wrapping around."""
    window = postings[start:start + limit]
    if len(window) < limit:
        window += postings[: min(start, limit - len(window))]
    return window


def interest(cands: Candidates, catalog: Catalog, state: UserState, budget: int,
             rng: np.random.Generator, max_features: int = 8) -> None:
    """Items sharing the user's strongest positive tags, topics, creators and sounds; each feature gets
    a share of the budget in proportion to its weight."""
    positive = [(w, f) for f, w in state.weights.items() if w > 0]
    if not positive or budget <= 0:
        return
    positive.sort(reverse=True)
    top = positive[:max_features]
    total = sum(w for w, _ in top)
    for weight, feature in top:
        share = max(1, int(budget * weight / total))
        postings = _postings(catalog, feature)
        if postings:
            start = int(rng.integers(len(postings)))
            cands.add(_window(postings, start, 3 * share), "interest", feature, share)


def follows(cands: Candidates, catalog: Catalog, state: UserState, budget: int) -> None:
    """The newest items of followed creators."""
    if not state.follows or budget <= 0:
        return
    share = max(1, budget // len(state.follows))
    for creator in state.follows:
        postings = catalog.by_creator.get(creator, [])
        cands.add(reversed(postings[-4 * share:]), "follows", budget=share)


def trending(cands: Candidates, top: np.ndarray, budget: int) -> None:
    """Highest time-decayed engagement in the user's region."""
    cands.add(top, "trending", budget=budget)


def fresh(cands: Candidates, catalog: Catalog, now: float, window_s: float, max_views: int,
          budget: int, scan: int = 2000) -> None:
    """Recent uploads with few views, least-shown first, so that new videos get seen."""
    if budget <= 0:
        return
    recent = np.asarray(catalog.arrivals[-scan:], dtype=np.int64)
    if len(recent) == 0:
        return
    young = recent[(catalog.created_at[recent] >= now - window_s) & (catalog.stats[recent, 1] < max_views)
                   & catalog.alive[recent]]
    order = young[np.argsort(catalog.stats[young, 0], kind="stable")]
    cands.add(order, "fresh", budget=budget)


def coengagement(cands: Candidates, neighbours: list[list[int]], budget: int) -> None:
    """Items that people who finished the user's recent favourites also finished."""
    if not neighbours or budget <= 0:
        return
    share = max(1, budget // len(neighbours))
    for items in neighbours:
        cands.add(items, "coengagement", budget=share)


def fallback(cands: Candidates, n_items: int, budget: int, rng: np.random.Generator) -> None:
    """Random items, so that a feed has candidates beyond what the user's signals reach."""
    if budget <= 0 or n_items == 0:
        return
    cands.add(rng.integers(0, n_items, size=2 * budget), "fallback", budget=budget)


def sweep(cands: Candidates, keep: Callable[[np.ndarray], np.ndarray], start: int, n_items: int, want: int,
          step: int, most: int, deadline: float | None = None) -> int:
    """The catalogue a bounded stretch at a time, from item index `start` on (wrapping round): adds, in
    index order, the items not yet excluded or proposed that `keep` allows, until `want` were added,
    `most` indexes were looked at, or `deadline` (a `time.perf_counter()` value) has passed. Returns
    where the next sweep should start: right after the last item added, so that over successive calls
    every item is reached and none is skipped."""
    if n_items == 0 or want <= 0:
        return start
    pos, looked, limit = start % n_items, 0, min(most, n_items)
    excluded, proposed = cands.excluded, cands.sources
    while looked < limit and want > 0:
        stop = min(pos + step, n_items, pos + limit - looked)
        span = np.arange(pos, stop, dtype=np.int64)
        idx = np.asarray([i for i in span[~excluded.mask(span)].tolist() if i not in proposed], np.int64)
        taken = idx[keep(idx)][:want].tolist() if len(idx) else []
        cands.add(taken, "fallback")
        want -= len(taken)
        looked += stop - pos
        pos = (taken[-1] + 1 if want == 0 else stop) % n_items
        if deadline is not None and time.perf_counter() > deadline:
            break
    return pos


def explore(cands: Candidates, catalog: Catalog, topics: list[int], rng: np.random.Generator,
            per_topic: int = 60) -> None:
    """Some items of each topic chosen for exploration (a random window of its postings)."""
    for topic in topics:
        postings = catalog.by_topic.get(topic, [])
        if postings:
            start = int(rng.integers(len(postings)))
            cands.add(_window(postings, start, per_topic), "explore", key(TOPIC, topic))


def learned(cands: Candidates, nearest: np.ndarray, budget: int) -> None:
    """The learned retrieval model's nearest items to the user's vector (already best first)."""
    cands.add(nearest, "learned", budget=budget)
