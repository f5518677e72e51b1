"""The item aggregates' part of the live state: counters, catalogue-wide sums, trending and the
co-engagement neighbours. Their one writer is the log follower (follower.py), which calls
`apply_item_events`: in the trainer process where a server runs (`foryou/roles/train.py`, which
publishes them to servers: `published.py`), else in the process that runs every role. A feed counts
what it serves (`apply_served`), until the writer's rows replace that count."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np

from foryou.catalog import STATS
from foryou.columns import EventColumns
from foryou.signals import TREND_VIEW, TREND_WEIGHT, completion_mask, early_swipe_mask, strong_mask
from foryou.state.fields import LiveUser, StateFields
from foryou.types import EVENT_TYPES, ServedRecord

_ACTION_COLUMN = {k: STATS[v] for k, v in (
    ("like", "likes"), ("comment", "comments"), ("share", "shares"), ("follow", "follows"),
    ("not_interested", "not_interested"), ("report", "reports"))}
_KIND = {k: n for n, k in enumerate(EVENT_TYPES)}  # "view" is 0
_COLUMN_OF_KIND = np.array([_ACTION_COLUMN.get(k, -1) for k in EVENT_TYPES], np.int64)
_TREND_OF_KIND = np.array([TREND_WEIGHT.get(k, 0.0) for k in EVENT_TYPES], np.float64)
_VIEWS, _WATCH, _COMPLETIONS, _EARLY, _SERVED = (
    STATS["views"], STATS["watch_s"], STATS["completions"], STATS["early_swipes"], STATS["served"])


APPENDED_MAX = 50_000  # appended events kept for the log follower; past it, it reads the log back


class Items(StateFields):
    def keep_appended(self, region: str, first: int, events: EventColumns) -> None:
        """Events this process just appended to the region's log, at seqs from `first` on: the log
        follower beside the requests takes them from here (`appended_after`). None are kept where
        another process writes the item aggregates."""
        if not self.items_owner:
            return
        held = self.appended[region]
        held.append((first, events))
        if sum(len(e) for _, e in held) > APPENDED_MAX:  # the follower is far behind: it reads the log
            held.clear()

    def appended_after(self, region: str, position: int, limit: int) -> tuple[EventColumns, range] | None:
        """Up to `limit` kept events of the region's log from seq `position + 1` on, with their seqs; None
        when the next one is not kept (appended by another process, or dropped): read the log then."""
        held = self.appended[region]
        while held and held[0][0] + len(held[0][1]) <= position + 1:  # taken already
            held.popleft()
        if not held or held[0][0] > position + 1:
            return None
        first, events = held[0]
        lo = position + 1 - first
        hi = min(len(events), lo + limit)
        if hi == len(events):
            held.popleft()
        return (events if lo == 0 and hi == len(events) else events.take(range(lo, hi))), range(first + lo, first + hi)

    def topic_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue-wide views and completions by topic code (-1 views: no item has that topic)."""
        sums = self.catalog.topic_sums[: len(self.catalog.tags)]
        return np.where(sums[:, 0] > 0, sums[:, 1], -1.0), sums[:, 2].copy()

    def apply_item_events(self, region: str, events: EventColumns, seqs: Sequence[int]) -> None:
        """The log follower's part (the one writer of the item aggregates): counters, catalogue-wide
        sums and trending for the events past `item_mark` (`seqs`: theirs, ascending), in log order."""
        mark = self.item_mark[region]
        if not seqs or seqs[-1] <= mark:
            return
        if seqs[0] <= mark:
            events = events.take(range(bisect.bisect_right(seqs, mark), len(seqs)))
        idx = events.item_codes(self.catalog.index)
        if (idx < 0).any():
            known = np.flatnonzero(idx >= 0)
            events, idx = events.take(known.tolist()), idx[known]
        if len(idx):
            self._apply_items(region, events, idx)
        self.item_mark[region] = seqs[-1]

    def _apply_items(self, region: str, events: EventColumns, idx: np.ndarray) -> None:
        """Item counters and trending for a batch, vectorised."""
        stats = self.catalog.stats
        n = len(events)
        kinds, watch = events.type, events.watch_s
        duration = self.catalog.duration[idx]
        kind = np.fromiter(map(_KIND.__getitem__, kinds), np.int64, n)
        view = kind == 0
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
            columns = _COLUMN_OF_KIND[kind[action]]
            np.add.at(stats, (idx[action], columns), 1.0)
            np.add.at(totals, columns, 1.0)
        weights = np.where(view, np.where(complete, TREND_VIEW[0], np.where(early, TREND_VIEW[2], TREND_VIEW[1])),
                           _TREND_OF_KIND[kind])
        self.trending.add_many(region, idx, weights, events.ts)
        self.dirty_items.update(idx.tolist())
        if self.coeng_on:  # each strong positive with its user's previous ones
            pairs = self._positives(events.user, idx, strong_mask(kinds, watch, duration))
            if pairs:
                both = np.asarray(pairs, np.int64).reshape(-1, 2)
                self.coeng.add(np.concatenate([both[:, 0], both[:, 1]]), np.concatenate([both[:, 1], both[:, 0]]))

    def _positives(self, users: Sequence[str], idx: np.ndarray, strong: np.ndarray) -> list[int]:
        """The co-engaged pairs of a batch's strong positives, as `Positives.pairs` finds them."""
        return self.positives.pairs([users[k] for k in np.flatnonzero(strong).tolist()], idx[strong].tolist())

    def warm_positives(self, events: EventColumns) -> None:
        """Take in the strong positives of logged events the aggregates already hold (the log before
        their watermark, at a start), counting nothing: what the next positives pair with."""
        idx = events.item_codes(self.catalog.index)
        known = np.flatnonzero(idx >= 0)
        events, idx = events.take(known.tolist()), idx[known]
        self._positives(events.user, idx, strong_mask(events.type, events.watch_s, self.catalog.duration[idx]))

    def count_served(self, region: str, rows: Iterable[ServedRecord]) -> list[int]:
        """Impressions read back from the log (at a start, or by a trainer process): counted, and
        `served_mark` moves past them. Returns the items counted, in order."""
        catalog, counted = self.catalog, []
        for served in rows:
            idx = catalog.index.get(served.item)
            if idx is not None:
                catalog.stats[idx, _SERVED] += 1
                counted.append(idx)
            self.served_mark[region] = served.seq
        self.dirty_items.update(counted)
        self._totals[_SERVED] += len(counted)
        return counted

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
