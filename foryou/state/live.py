"""The engine's derived state, in memory: catalogue index and counters, regional trending, and the
interest state of recently active users. The item aggregates are rebuilt at start from the last
checkpoint plus the events and served rows logged after it; a user's state is read when needed and
caught up with the user's events logged after it; both are checkpointed every few seconds. Its
parts, by concern: users.py, items.py, checkpoints.py (their shared fields: fields.py)."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import numpy as np

from foryou import snapshot
from foryou.catalog import STATS, Catalog
from foryou.columns import EventColumns
from foryou.config import Settings
from foryou.policy import Pools
from foryou.state.checkpoints import Checkpoints
from foryou.state.coengagement import CoEngagement, Positives
from foryou.state.fields import LiveUser
from foryou.state.items import Items
from foryou.state.users import Users
from foryou.store import Store
from foryou.store.writer import AggregateWriter
from foryou.trending import Trending
from foryou.types import EventRecord

T = TypeVar("T")
# Events before the aggregates' watermark read at a start for users' last strong positives, which
# co-engagement pairs the next ones with: a pair whose earlier positive is older is not counted
WARM_POSITIVES = 100_000


class Live(Users, Items, Checkpoints):
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float]) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        regions = settings.server.regions
        self.catalog = Catalog(regions)
        self.trending = Trending(regions, settings.signals.trending_half_life_h * 3600 / math.log(2))
        self.tau = settings.signals.interest_half_life_h * 3600 / math.log(2)
        # Recently active users, least recently used first: an idle user leaves memory entirely (the
        # store knows every user's region; `regions_of` asks it for users not here).
        self.users: OrderedDict[str, LiveUser] = OrderedDict()
        self.pending: dict[str, str] = {}  # users of a batch being appended, not stored yet: their region
        # Regions of stored users not in memory, as the store gave them (a region never changes; an
        # erasure drops the user's): a batch names the same users again and again, and asking the
        # store for each batch's was 10% of a server's time while ingesting. Bounded (`Users.regions_of`).
        self.stored_regions: dict[str, str] = {}
        self.dirty_items: set[int] = set()
        # Events this process appended that the log follower, running beside the requests, has not
        # taken yet, per region as (first seq, columns): it takes them from here rather than reading
        # them back from the log (`Items.appended_after`). Bounded; an erasure empties it.
        self.appended: dict[str, deque[tuple[int, EventColumns]]] = {r: deque() for r in regions}
        self.writer: AggregateWriter | None = None  # writes the item aggregates beside (a server's)
        # Per region, users with unsaved state, oldest change first (dicts keep insertion order).
        self.dirty_users: dict[str, dict[str, LiveUser]] = {r: {} for r in regions}
        self.coeng = CoEngagement()  # each item's most co-engaged items, and which rows changed
        self.positives = Positives()  # each user's last strong positives, as the log follower met them
        self.coeng_on = True  # co-engagement only serves feeds: a trainer's replica does not count it
        # Whether this process writes the item aggregates (saves them, decides the pools): a server
        # whose trainer process publishes them (state/published.py) only reads them
        self.items_owner = True
        self.aggregates_token = ""  # of the last aggregates this process handed to the store
        self.event_mark = {r: 0 for r in regions}  # the log applied to users' interest state, through
        self.item_mark = {r: 0 for r in regions}  # ... and to the item aggregates (the log follower's)
        self.served_mark = {r: 0 for r in regions}
        self.last_checkpoint = 0.0
        self.vocab_saved = {"tags": 0, "creators": 0, "sounds": 0}  # codes in the store's vocabularies
        # Column sums of the item counters, kept as events and serves are applied: summing a million
        # rows on a request took tens of milliseconds (the pool columns' sums mean nothing and are not kept)
        self._totals = np.zeros(len(STATS))
        self._in_progress = False
        self._last_purge = 0.0
        p, w = settings.policy, settings.weights
        self.pools = Pools(p.first_pool, p.pool_growth, p.pool_count, p.promote_quantile, p.pool_eval_delay_s,
                           p.pool_max_age_h * 3600, p.pool_within_h * 3600, (w.complete, w.like, w.share),
                           expire_s=p.pool_expire_days * 86400)

    def load(self, users: bool = True, coengagement: bool | None = None) -> None:
        """The catalogue and the item aggregates, replaying the log past their watermark (users' states
        are not replayed: each catches up with the log when read); with `coengagement` (by default
        `users`), the co-engagement rows and the users' last positives they pair with. A trainer
        process (no `users`) never serves."""
        store = self.store
        persisted = {kind: store.vocab(kind) for kind in self.vocab_saved}
        if not users:  # never serves: what only feeds read is not kept (`Catalog`)
            self.catalog = Catalog(self.catalog.regions, serving=False)
        restored = snapshot.load(Path(self.settings.server.data), self.catalog.regions, store.catalogue_version(),
                                 serving=users)
        if restored is not None and all(getattr(restored, kind).names[: len(names)] == names
                                        for kind, names in persisted.items()):
            self.catalog = restored  # the catalogue as of the last clean stop, and unchanged since
        else:  # the saved states' codes first: items' new names come after them
            for kind, names in persisted.items():
                vocab = getattr(self.catalog, kind)
                for name in names:
                    vocab(name)
            self.catalog.put_many(store.iter_items())
        self.vocab_saved = {kind: len(names) for kind, names in persisted.items()}
        self.load_items(users, users if coengagement is None else coengagement)
        self.last_checkpoint = self.clock()

    def reload_items(self) -> None:
        """The item aggregates afresh, as a start loads them (a server that fell too far behind the
        deltas its trainer publishes: `published.py`)."""
        catalog, n = self.catalog, len(self.catalog)
        catalog.stats[:n] = 0.0
        for scores in self.trending.scores.values():
            scores[:] = 0.0
        self.trending.invalidate()
        self.coeng.nb[:], self.coeng.w[:] = -1, 0.0
        p = self.pools
        p.active, p.evaluating = set(), {}
        for reference in p.reference:
            reference.clear()
        self.load_items(True, self.coeng_on)

    def load_items(self, users: bool, coengagement: bool) -> None:
        """`load`'s item aggregates: the snapshot's or the store's, then the log after their watermark."""
        store, catalog = self.store, self.catalog
        self.trending.t0 = float(store.get_meta("trend_t0") or 0.0)
        self.trending.ensure(len(catalog))
        saved = snapshot.load_aggregates(Path(self.settings.server.data), store.get_meta(snapshot.TOKEN),
                                         catalog.regions, len(catalog))
        if saved is not None:
            n = len(saved.stats)
            catalog.stats[:n, : saved.stats.shape[1]] = saved.stats
            for region, scores in saved.trend.items():
                self.trending.scores[region][:n] = scores
            if coengagement:
                self.coeng.ensure(n)
                self.coeng.nb[:n], self.coeng.w[:n] = saved.coeng_nb, saved.coeng_w
        else:
            self._load_aggregates(coengagement)
        if coengagement:
            self._convert_legacy_coengagement()
        self.coeng_on = coengagement
        marks = store.item_watermarks()
        for region in catalog.regions:
            # The item aggregates replay the log past their watermark; users' states are not replayed:
            # each catches up with the log when next read (`Users.catch_up`, by the user's newest event).
            item_events, item_served = marks.get(region, (0, 0))
            self.item_mark[region] = item_events
            if coengagement:  # the positives that the replay's and the next events' pair with (not saved)
                start = max(0, item_events - WARM_POSITIVES)
                self.warm_positives(EventColumns.of(list(store.events_after(region, start, item_events - start))))
            chunk: list[EventRecord] = []
            for event in store.events_after(region, item_events):
                chunk.append(event)
                if len(chunk) >= 10_000:
                    self.apply_item_events(region, EventColumns.of(chunk), [e.seq for e in chunk])
                    chunk = []
            if chunk:
                self.apply_item_events(region, EventColumns.of(chunk), [e.seq for e in chunk])
            self.count_served(region, store.served_after(region, item_served))
            self.event_mark[region] = max(self.event_mark[region], self.item_mark[region],
                                          store.user_state_watermark(region) if users else 0)
            self.item_mark[region] = self.event_mark[region]
            self.served_mark[region] = max(self.served_mark[region], item_served)
        self.pools.load(catalog, self.clock())
        self.pools.loads(store.get_meta("pool_reference"))
        self._totals = catalog.stats[: len(catalog)].sum(axis=0)  # once; from now on kept as things happen
        catalog.recount_topics()

    def _load_aggregates(self, users: bool) -> None:
        """The item aggregates as saved in the store, row by row (no snapshot of them was usable);
        co-engagement, which only serves feeds, only `users` (a trainer process has no use for it)."""
        store, catalog = self.store, self.catalog
        where, rows = _indexed(catalog.index, store.iter_item_stats())
        if rows:
            catalog.stats[np.asarray(where), : len(rows[0])] = np.asarray(rows)
        for region in catalog.regions:
            where, scores = _indexed(catalog.index, store.iter_trend(region))
            self.trending.scores[region][np.asarray(where, np.int64)] = scores
        if users:
            where, blobs = _indexed(catalog.index, store.iter_coengagement())
            self.coeng.load(np.asarray(where, np.int64), blobs)

    def _convert_legacy_coengagement(self) -> None:
        """Pair counts saved by earlier versions become rows, saved as such at once (a crash before the
        pairs are dropped converts them again, to the same rows)."""
        store, index, coeng = self.store, self.catalog.index, self.coeng
        legacy = False
        for item_id, group in groupby(store.legacy_coengagement(coeng.k), key=lambda abw: abw[0]):
            legacy = True
            idx = index.get(item_id)
            if idx is not None:
                coeng.put(idx, [(index[b], w) for _, b, w in group if b in index])
        if legacy:
            self._save_items(wait=True)
            store.drop_legacy_coengagement()


def _indexed(index: Mapping[str, int], rows: Iterable[tuple[str, T]]) -> tuple[list[int], list[T]]:
    """(catalogue indexes, values) of the (item id, value) rows whose item the catalogue holds."""
    where: list[int] = []
    values: list[T] = []
    for item_id, value in rows:
        idx = index.get(item_id)
        if idx is not None:
            where.append(idx)
            values.append(value)
    return where, values
