"""The item aggregates' part of the live state: counters, catalogue-wide sums, trending and the
co-engagement neighbours. Their one writer is the log follower (follower.py), which calls
`apply_item_events`; a feed counts what it serves (`apply_served`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from foryou.catalog import STATS
from foryou.signals import TREND_VIEW, TREND_WEIGHT, completion_mask, early_swipe_mask, strong_mask
from foryou.state.fields import LiveUser, StateFields
from foryou.types import EventRecord, ServedRecord

_ACTION_COLUMN = {k: STATS[v] for k, v in (
    ("like", "likes"), ("comment", "comments"), ("share", "shares"), ("follow", "follows"),
    ("not_interested", "not_interested"), ("report", "reports"))}
_VIEWS, _WATCH, _COMPLETIONS, _EARLY, _SERVED = (
    STATS["views"], STATS["watch_s"], STATS["completions"], STATS["early_swipes"], STATS["served"])


class Items(StateFields):
    def topic_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue-wide views and completions by topic code (-1 views: no item has that topic)."""
        sums = self.catalog.topic_sums[: len(self.catalog.tags)]
        return np.where(sums[:, 0] > 0, sums[:, 1], -1.0), sums[:, 2].copy()

    def apply_item_events(self, region: str, events: Sequence[EventRecord], seqs: Sequence[int]) -> None:
        """The log follower's part (the one writer of the item aggregates): counters, catalogue-wide
        sums and trending for the events past `item_mark`, in log order."""
        mark = self.item_mark[region]
        index = self.catalog.index
        rows = [(e, index[e.item]) for e, seq in zip(events, seqs, strict=True) if seq > mark and e.item in index]
        if rows:
            self._apply_items(region, [e for e, _ in rows], np.fromiter((i for _, i in rows), np.int64, len(rows)))
        if seqs and seqs[-1] > mark:
            self.item_mark[region] = seqs[-1]

    def _apply_items(self, region: str, events: list[EventRecord], idx: np.ndarray) -> None:
        """Item counters and trending for a batch, vectorised."""
        stats = self.catalog.stats
        n = len(events)
        kinds = [e.type for e in events]
        watch = np.fromiter((e.watch_s for e in events), np.float64, n)
        ts = np.fromiter((e.ts for e in events), np.float64, n)
        duration = self.catalog.duration[idx]
        view = np.fromiter((k == "view" for k in kinds), np.bool_, n)
        complete = view & completion_mask(watch, duration)
        early = view & ~complete & early_swipe_mask(watch, duration)
        np.add.at(stats[:, _VIEWS], idx[view], 1.0)
        np.add.at(stats[:, _WATCH], idx[view], watch[view])
        np.add.at(stats[:, _COMPLETIONS], idx[complete], 1.0)
        np.add.at(stats[:, _EARLY], idx[early], 1.0)
        self.catalog.count_topic_views(idx[view], complete[view])
        totals = self._totals
        totals[_VIEWS] += view.sum()
        totals[_WATCH] += watch[view].sum()
        totals[_COMPLETIONS] += complete.sum()
        totals[_EARLY] += early.sum()
        if not view.all():
            action = ~view
            columns = np.fromiter((_ACTION_COLUMN[k] for k in kinds if k != "view"), np.int64)
            np.add.at(stats, (idx[action], columns), 1.0)
            np.add.at(totals, columns, 1.0)
        weights = np.where(view, np.where(complete, TREND_VIEW[0], np.where(early, TREND_VIEW[2], TREND_VIEW[1])),
                           np.fromiter((TREND_WEIGHT.get(k, 0.0) for k in kinds), np.float64, n))
        self.trending.add_many(region, idx, weights, ts)
        self.dirty_items.update(idx.tolist())
        if self.coeng_on:  # each strong positive with its user's previous ones
            pairs = self._positives(events, idx, strong_mask(kinds, watch, duration))
            if pairs:
                both = np.asarray(pairs, np.int64).reshape(-1, 2)
                self.coeng.add(np.concatenate([both[:, 0], both[:, 1]]), np.concatenate([both[:, 1], both[:, 0]]))

    def _positives(self, events: Sequence[EventRecord], idx: np.ndarray, strong: np.ndarray) -> list[int]:
        """The co-engaged pairs of a batch's strong positives, as `Positives.pairs` finds them."""
        return self.positives.pairs([events[k].user for k in np.flatnonzero(strong).tolist()], idx[strong].tolist())

    def warm_positives(self, events: Sequence[EventRecord]) -> None:
        """Take in the strong positives of logged events the aggregates already hold (the log before
        their watermark, at a start), counting nothing: what the next positives pair with."""
        index, duration = self.catalog.index, self.catalog.duration
        known = [e for e in events if e.item in index]
        idx = np.fromiter((index[e.item] for e in known), np.int64, len(known))
        watch = np.fromiter((e.watch_s for e in known), np.float64, len(known))
        self._positives(known, idx, strong_mask([e.type for e in known], watch, duration[idx]))

    def count_served(self, region: str, rows: Iterable[ServedRecord]) -> None:
        """Impressions read back from the log (at a start, or by a trainer process): counted, and
        `served_mark` moves past them."""
        catalog = self.catalog
        for served in rows:
            idx = catalog.index.get(served.item)
            if idx is not None:
                catalog.stats[idx, _SERVED] += 1
                self.dirty_items.add(idx)
            self.served_mark[region] = served.seq

    def apply_served(self, region: str, live: LiveUser, idxs: list[int], last_seq: int) -> None:
        catalog = self.catalog
        for idx in idxs:
            catalog.stats[idx, _SERVED] += 1
            live.state.excluded.add(idx)
            self.dirty_items.add(idx)
        self._totals[_SERVED] += len(idxs)
        if idxs:
            state, last = live.state, idxs[-1]
            if state.served_seq >= 0:
                state.served_seq = max(state.served_seq, last_seq)
            state.last_creator, state.last_sound = catalog.creator_l[last], catalog.sound_l[last]
            state.last_topic = catalog.topic_l[last]
            self.touch(live)
        self.pools.served(catalog, idxs, self.clock())
        self.served_mark[region] = max(self.served_mark[region], last_seq)

    def neighbours(self, idx: int, limit: int = 50) -> list[int]:
        """The items most co-engaged with item `idx`, strongest first."""
        return self.coeng.neighbours(idx, limit)

    def totals(self) -> np.ndarray:
        """Column sums of the item counters (views, completions, likes ...), as of now."""
        return self._totals
