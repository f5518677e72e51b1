"""The engine's derived state, in memory: catalogue index and counters, regional trending, and the
interest state of recently active users. It is rebuilt at start from the last checkpoint plus the
events and served rows logged after it, and checkpointed back to the store every few seconds."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from foryou import snapshot
from foryou.catalog import STATS, Catalog
from foryou.config import Settings
from foryou.errors import Conflict
from foryou.interest import UserState, dumps, learn_one, loads, seed_interests
from foryou.policy import Controls, KeywordFilter, Pools
from foryou.signals import TREND_VIEW, TREND_WEIGHT, completion_mask, early_swipe_mask
from foryou.store import Store
from foryou.store.writer import AggregateCheckpoint, AggregateWriter
from foryou.trending import Trending
from foryou.types import EventRecord, ServedRecord, UserRecord

_ACTION_COLUMN = {k: STATS[v] for k, v in (
    ("like", "likes"), ("comment", "comments"), ("share", "shares"), ("follow", "follows"),
    ("not_interested", "not_interested"), ("report", "reports"))}
_VIEWS, _WATCH, _COMPLETIONS, _EARLY, _SERVED = (
    STATS["views"], STATS["watch_s"], STATS["completions"], STATS["early_swipes"], STATS["served"])


@dataclass
class LiveUser:
    profile: UserRecord
    state: UserState
    dirty_since: int = 0  # seq of the first logged event not yet in the saved state; 0 when saved
    stored: bool = True  # False until the profile is written to the store
    serving_loaded: bool = False  # served/viewed items, the last served ones and the controls read
    controls: Controls = field(default_factory=Controls)
    keywords: KeywordFilter | None = None  # the controls' blocked keywords, compiled (feed.py)
    sweep_at: int = -1  # where the next sweep of the catalogue starts (-1: nowhere yet)

    @property
    def dirty(self) -> bool:
        return self.dirty_since > 0


class Live:
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
        self.dirty_items: set[int] = set()
        self.writer: AggregateWriter | None = None  # writes the item aggregates beside (a server's)
        # Per region, users with unsaved state, oldest change first (dicts keep insertion order).
        self.dirty_users: dict[str, dict[str, LiveUser]] = {r: {} for r in regions}
        # Co-engagement deltas not yet saved, keyed by the pair of item indexes packed into one int.
        self.coeng: dict[int, float] = {}
        self._neighbours: OrderedDict[int, list[int]] = OrderedDict()  # item -> saved top co-engaged
        self.event_mark = {r: 0 for r in regions}  # the log applied to users' interest state, through
        self.item_mark = {r: 0 for r in regions}  # ... and to the item aggregates (the log follower's)
        # Co-engagement is counted as events reach users' state, not the aggregates: its deltas are
        # saved with the event mark of the checkpoint that saved them, and a replay counts only past it.
        self.coeng_mark = {r: 0 for r in regions}
        # The co-engagement mark of the last aggregates committed to the store: a user's state is not
        # saved past it (a replay could no longer count that user's pairs, which need their recent
        # positives as of each event).
        self.coeng_saved = {r: 0 for r in regions}
        self.served_mark = {r: 0 for r in regions}
        self.last_checkpoint = 0.0
        # Column sums of the item counters, kept as events and serves are applied: summing a million
        # rows on a request took tens of milliseconds (the pool columns' sums mean nothing and are not kept)
        self._totals = np.zeros(len(STATS))
        self._in_progress = False
        self._last_purge = 0.0
        p, w = settings.policy, settings.weights
        self.pools = Pools(p.first_pool, p.pool_growth, p.pool_count, p.promote_quantile, p.pool_eval_delay_s,
                           p.pool_max_age_h * 3600, p.pool_within_h * 3600, (w.complete, w.like, w.share),
                           expire_s=p.pool_expire_days * 86400)

    # -- start-up --
    def load(self, users: bool = True) -> None:
        """The catalogue, the item aggregates and (with `users`) the users' interest state, replaying
        the log past their checkpoints. A trainer process loads no users' state: it never serves."""
        store = self.store
        restored = snapshot.load(Path(self.settings.server.data), self.catalog.regions, store.catalogue_version())
        if restored is not None:  # the catalogue as of the last clean stop, and unchanged since
            self.catalog = restored
        else:
            self.catalog.put_many(store.iter_items())
        catalog = self.catalog
        rows, where = [], []
        for item_id, row in store.iter_item_stats():
            idx = catalog.index.get(item_id)
            if idx is not None:
                where.append(idx)
                rows.append(row)
        if rows:
            catalog.stats[np.asarray(where), : len(rows[0])] = np.asarray(rows)
        self.trending.t0 = float(store.get_meta("trend_t0") or 0.0)
        self.trending.ensure(len(catalog))
        for region in catalog.regions:
            arr = self.trending.scores[region]
            for item_id, score in store.iter_trend(region):
                idx = catalog.index.get(item_id)
                if idx is not None:
                    arr[idx] = score
        marks = store.item_watermarks()
        for region in catalog.regions:
            item_events, item_served = marks.get(region, (0, 0))
            state_mark = store.user_state_watermark(region) if users else 1 << 62
            saved_coeng = store.get_meta(f"coeng_mark:{region}")  # absent before this was kept: the aggregates'
            self.coeng_mark[region] = int(saved_coeng) if saved_coeng is not None else item_events
            self.coeng_saved[region] = self.coeng_mark[region]
            chunk: list[EventRecord] = []
            for event in store.events_after(region, min(item_events, state_mark)):
                chunk.append(event)
                if len(chunk) >= 10_000:
                    self.apply_events(region, chunk, [e.seq for e in chunk], item_events, state_mark)
                    chunk = []
            if chunk:
                self.apply_events(region, chunk, [e.seq for e in chunk], item_events, state_mark)
            self.count_served(region, store.served_after(region, item_served))
            self.event_mark[region] = max(self.event_mark[region], self.item_mark[region], item_events,
                                          state_mark if users else 0)
            self.item_mark[region] = self.event_mark[region]  # replayed: the aggregates are caught up
            self.coeng_mark[region] = self.event_mark[region]
            self.served_mark[region] = max(self.served_mark[region], item_served)
        self.pools.load(catalog, self.clock())
        self.pools.loads(store.get_meta("pool_reference"))
        self._totals = catalog.stats[: len(catalog)].sum(axis=0)  # once; from now on kept as things happen
        catalog.recount_topics()
        self.last_checkpoint = self.clock()

    # -- users --
    def region_of(self, user_id: str) -> str | None:
        """The region of a stored user."""
        return self.regions_of([user_id]).get(user_id)

    def regions_of(self, user_ids: Iterable[str]) -> dict[str, str]:
        """The regions of those of `user_ids` that are stored: from memory for active users, one
        look-up per region in the store for the others."""
        out: dict[str, str] = {}
        ask: list[str] = []
        for user_id in user_ids:
            live = self.users.get(user_id)
            if live is None:
                ask.append(user_id)
            elif live.stored:
                out[user_id] = live.profile.region
        if ask:
            out.update(self.store.find_user_regions(ask))
        return out

    def unknown(self, user_ids: Iterable[str]) -> list[str]:
        """Those of `user_ids` neither stored nor being placed by a batch: a request naming them creates them."""
        ids = [u for u in dict.fromkeys(user_ids) if u not in self.pending]
        stored = self.regions_of(ids)
        return [u for u in ids if u not in stored]

    def place(self, user_id: str, region: str | None = None) -> str:
        """The region a request about this user acts in: the user's own. A region the request names
        (X-Region, or the profile's `region`) must be one this server holds and, for a stored user,
        theirs: a user's data is never copied to another region's store to serve a request."""
        return self.place_many([user_id], region)[user_id]

    def place_many(self, user_ids: Iterable[str], region: str | None = None) -> dict[str, str]:
        """`place` for the users of a batch, with one look-up per region for those not in memory."""
        self.check_held(region)
        ids = list(dict.fromkeys(user_ids))
        stored = self.regions_of(ids)
        placed = {}
        for user_id in ids:
            found = stored.get(user_id) or self.pending.get(user_id)
            if region is not None and found is not None and found != region:
                raise Conflict(f"user {user_id!r} belongs to region {found!r}, not {region!r}; a region is fixed "
                               "once set", field="region")
            placed[user_id] = found or region or self.settings.server.regions[0]
        return placed

    @contextlib.contextmanager
    def placing(self, user_ids: Iterable[str], region: str | None) -> Iterator[None]:
        """While a batch of events is appended in chunks, its users not stored yet count as placed in
        `region` (default: the first held), so that a request about them meanwhile finds them there."""
        fresh = self.unknown(user_ids)
        for user_id in fresh:
            self.pending[user_id] = region or self.settings.server.regions[0]
        try:
            yield
        finally:
            for user_id in fresh:
                del self.pending[user_id]

    def check_held(self, region: str | None) -> None:
        """409 for a region this server does not hold: its users' data is elsewhere."""
        held = self.settings.server.regions
        if region is not None and region not in held:
            raise Conflict(f"region {region!r} is not held by this server (it holds {', '.join(held)}): "
                           f"send requests for its users to the server of region {region!r}", field="region")

    def user(self, user_id: str, region: str | None = None) -> LiveUser:
        """The user's live state, loaded on demand; a user never seen is created in `region`
        (default: the server's first region) but not stored until `persist_user`."""
        live = self.users.get(user_id)
        if live is not None:
            self.users.move_to_end(user_id)
            return live
        self.prefetch([user_id], region)
        return self.users[user_id]

    def prefetch(self, user_ids: Sequence[str], region: str | None = None) -> None:
        """Load the profiles and interest state of the users not in memory, one query per region
        (ingestion calls this once per batch)."""
        missing = [u for u in dict.fromkeys(user_ids) if u not in self.users]
        if not missing:
            return
        self._trim()  # before, not after: the users loaded now are about to be used
        catalog, now = self.catalog, self.clock()
        for found in self.catalog.regions:  # one look-up per region: the store knows where each user is
            profiles = self.store.get_users(found, missing)
            if not profiles:
                continue
            blobs = self.store.load_user_states(found, list(profiles))
            for user_id, profile in profiles.items():
                blob = blobs.get(user_id)
                state = loads(blob, catalog) if blob else UserState()
                if not blob and profile.interests:
                    seed_interests(state, catalog, profile.interests, now, self.tau)
                self.users[user_id] = LiveUser(profile, state)
            missing = [u for u in missing if u not in profiles]
            if not missing:
                break
        for user_id in missing:  # new users, created in `region` (stored once something is kept of them)
            profile = UserRecord(user_id, region or self.settings.server.regions[0], created_at=now)
            self.users[user_id] = LiveUser(profile, UserState(), stored=False, serving_loaded=True)

    def serving(self, live: LiveUser) -> LiveUser:
        """Make sure the user's served/viewed items and last served item are loaded (feeds need them;
        learning does not, so ingestion never pays for them)."""
        if not live.serving_loaded:
            catalog, state, region, user_id = self.catalog, live.state, live.profile.region, live.profile.id
            state.excluded |= {catalog.index[i] for i in self.store.excluded_items(region, user_id)
                               if i in catalog.index}
            # served rows are durable; the checkpointed copy of what came last may be older
            recent = [catalog.index[i] for i in self.store.recent_served(region, user_id, 8) if i in catalog.index]
            if recent:
                last = recent[0]
                state.last_creator, state.last_sound = catalog.creator_l[last], catalog.sound_l[last]
                state.last_topic = catalog.topic_l[last]
                topics = [catalog.topic_l[i] for i in recent]
                state.topic_run = next((k for k, t in enumerate(topics) if t != topics[0]), len(topics))
                sensitive = self.sensitive(np.asarray(recent, np.int64)).tolist()
                state.sensitive_run = next((k for k, s in enumerate(sensitive) if not s), len(sensitive))
            live.controls = Controls.loads(self.store.get_controls(region, user_id))
            live.serving_loaded = True
        return live

    def sensitive(self, idx: np.ndarray) -> np.ndarray:
        """Which of these items have a topic flagged sensitive (`policy.sensitive_topics`)."""
        codes = [c for t in self.settings.policy.sensitive_topics if (c := self.catalog.tags.ids.get(t)) is not None]
        return np.isin(self.catalog.topic[idx], codes) if codes else np.zeros(len(idx), np.bool_)

    def topic_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue-wide views and completions by topic code (-1 views: no item has that topic)."""
        sums = self.catalog.topic_sums[: len(self.catalog.tags)]
        return np.where(sums[:, 0] > 0, sums[:, 1], -1.0), sums[:, 2].copy()

    def forget_user(self, user_id: str, region: str) -> None:
        """Drop everything held in memory about the user of `region` (erasure): cached state, pending saves."""
        self.users.pop(user_id, None)
        self.dirty_users[region].pop(user_id, None)

    def persist_user(self, live: LiveUser) -> None:
        self.store.put_user(live.profile)
        self.mark_stored(live)

    def mark_stored(self, live: LiveUser) -> None:
        live.stored = True

    def _trim(self) -> None:
        """Evict least recently used users down to `store.user_cache`: nothing of an idle user stays in
        memory (a user never stored has nothing to lose). Users with unsaved state cannot leave yet:
        they are moved to the recent end, so each call looks at a bounded number of users (walking the
        whole cache on every call made loads with many dirty users quadratic)."""
        users = self.users
        dirty = sum(len(d) for d in self.dirty_users.values())
        excess = min(len(users) - self.settings.store.user_cache, len(users) - dirty)  # evictable
        budget = excess + 64  # dirty users met on the way move to the back: amortised O(1)
        while excess > 0 and budget > 0 and users:
            budget -= 1
            user_id, live = next(iter(users.items()))
            if live.dirty_since:
                users.move_to_end(user_id)
            else:
                del users[user_id]
                excess -= 1

    def touch(self, live: LiveUser, seq: int = 0) -> None:
        """Mark a user's state changed by event `seq` (or by something not in the event log)."""
        if not live.dirty_since:
            region = live.profile.region
            live.dirty_since = seq or self.event_mark[region] + 1
            self.dirty_users[region][live.profile.id] = live

    # -- applying what happened --
    def apply_events(self, region: str, events: Sequence[EventRecord], seqs: Sequence[int],
                     item_after: int = 0, user_after: int = 0) -> None:
        """Replay after a crash: logged events (seqs ascending) applied to users' interest state past
        `user_after` and to the item aggregates past `item_after`."""
        self.item_mark[region] = max(self.item_mark[region], item_after)
        self.apply_user_events(region, events, seqs, user_after)
        self.apply_item_events(region, events, seqs)

    def apply_user_events(self, region: str, events: Sequence[EventRecord], seqs: Sequence[int],
                          user_after: int = 0) -> None:
        """The request's part of ingestion: each event (its seq in the region's log, ascending) changes
        its user's interest state, so that the user's next feed reflects it; events with seq at most
        `user_after`, or already in a user's saved state, are skipped. The item aggregates follow from
        the log (`apply_item_events`, by the log follower)."""
        catalog = self.catalog
        index = catalog.index
        tau, user_of, coeng_after = self.tau, self.user, self.coeng_mark[region]
        mute_s = self.settings.policy.not_interested_days * 86400
        lives: dict[str, LiveUser] = {}  # each user looked up once a batch
        for event, seq in zip(events, seqs, strict=True):
            i = index.get(event.item)
            if i is None or seq <= user_after:
                continue
            live = lives.get(event.user) or lives.setdefault(event.user, user_of(event.user, region))
            state = live.state
            if seq <= state.seq:  # already in this user's saved state
                continue
            state.seq = seq
            recent = state.recent[-4:]
            strength = learn_one(state, catalog, i, event.type, event.watch_s, event.ts, tau, mute_s)
            self.touch(live, seq)
            # Co-engagement needs the user's recent positives as of the event: counted here (a
            # replay counts it again only past the mark of the last checkpoint that saved it).
            if strength >= 1.0 and seq > coeng_after:
                coeng = self.coeng
                for other in recent:
                    if other != i:
                        forward, backward = (other << 32) | i, (i << 32) | other
                        coeng[forward] = coeng.get(forward, 0.0) + 1.0
                        coeng[backward] = coeng.get(backward, 0.0) + 1.0
        if seqs and seqs[-1] > self.event_mark[region]:
            self.event_mark[region] = seqs[-1]

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
            state.last_creator, state.last_sound = catalog.creator_l[last], catalog.sound_l[last]
            state.last_topic = catalog.topic_l[last]
            self.touch(live)
        self.pools.served(catalog, idxs, self.clock())
        self.served_mark[region] = max(self.served_mark[region], last_seq)

    def neighbours(self, idx: int, limit: int = 50) -> list[int]:
        """The items most co-engaged with item `idx` (as saved at the last checkpoint), cached."""
        cached = self._neighbours.get(idx)
        if cached is None:
            index = self.catalog.index
            cached = [index[b] for b, _ in self.store.coengaged(self.catalog.ids[idx], limit) if b in index]
            self._neighbours[idx] = cached
            if len(self._neighbours) > 100_000:
                self._neighbours.popitem(last=False)
        return cached

    def totals(self) -> np.ndarray:
        """Column sums of the item counters (views, completions, likes ...), as of now."""
        return self._totals

    # -- persistence of derived state --
    def maybe_checkpoint(self, max_users: int = 200) -> bool:
        """The periodic work's (never a request's): every `checkpoint_interval_s`, save a bounded slice
        of state, so that no tick holds the server for a whole checkpoint; the slices continue, a tick
        each, until nothing is dirty. Decides the new-video pools that are due. Once an hour,
        idempotency keys past their time to live are dropped. Returns whether slices are still due."""
        now = self.clock()
        if now - self._last_purge >= 3600:  # keys are remembered from acceptance, in the engine's time
            self._last_purge = now
            self.store.forget_event_ids(now - self.settings.signals.event_id_ttl_days * 86400)
        self.dirty_items.update(self.pools.tick(self.catalog, now, self.totals()))
        pending = any(self.dirty_users.values())
        due = self.clock() - self.last_checkpoint >= self.settings.store.checkpoint_interval_s
        if due or (pending and self._in_progress):
            # The item aggregates once per interval; the users' slices continue between (under a
            # steady load they would otherwise never end, and each would save every item again).
            self._in_progress = not self.checkpoint(max_users, wait=False, items=due)
        return self._in_progress

    def save_snapshot(self) -> None:
        """At a clean stop: the catalogue as of now, for the next start to load instead of rebuilding."""
        directory = Path(self.settings.server.data)
        if directory.is_dir():
            snapshot.save(self.catalog, directory, self.store.catalogue_version())

    def write_beside(self, writer: AggregateWriter) -> None:
        """From now on checkpoints hand the item aggregates to `writer`, a thread of their own (a
        server's): the event loop only copies them."""
        self.writer = writer
        writer.start()

    def checkpoint(self, max_users: int | None = None, wait: bool = True, items: bool = True) -> bool:
        """Save dirty item aggregates (unless not `items`) and (up to `max_users`, oldest first) users'
        interest state. Each region's state watermark stays below the oldest change still unsaved, so
        replay after a crash re-applies exactly what is missing. Returns True when no user is left
        dirty. With a writer beside (`write_beside`) the aggregates are written by it; `wait`: before
        returning."""
        if items:
            self._save_items(wait)
        return self._save_users(max_users)

    def _save_items(self, wait: bool) -> None:
        catalog, trending = self.catalog, self.trending
        width, n = len(STATS), len(catalog)
        idx = np.fromiter(self.dirty_items, np.int64, len(self.dirty_items))
        trend = {}
        for r, d in trending.dirty.items():
            where = np.fromiter((i for i in d if i < n), np.int64)
            trend[r] = (where, trending.scores[r][where].astype(np.float64))
        marks = {r: (self.item_mark[r], self.served_mark[r]) for r in catalog.regions}
        ids, low = catalog.ids, (1 << 32) - 1
        coeng = {(ids[pair >> 32], ids[pair & low]): w for pair, w in self.coeng.items()}
        for pair in self.coeng:  # their saved neighbours change now
            self._neighbours.pop(pair >> 32, None)
        meta = {"trend_t0": repr(trending.t0), "pool_reference": self.pools.dumps(),
                **{f"coeng_mark:{r}": str(self.event_mark[r]) for r in catalog.regions}}
        saved = AggregateCheckpoint(idx, catalog.stats[idx, :width].astype(np.float64), trend, coeng, marks, meta,
                                    dict(self.event_mark))
        self.dirty_items = set()  # handed over: a failed write is the writer's to retry, never ours again
        self.coeng = {}
        for dirty in trending.dirty.values():
            dirty.clear()
        self.last_checkpoint = self.clock()
        if self.writer is not None:
            self.writer.submit(saved)
            if wait:
                self.writer.flush()
        else:
            saved.save(self.store, catalog.ids)
            self.aggregates_saved(saved)

    def aggregates_saved(self, saved: AggregateCheckpoint) -> None:
        """`saved` is committed (called by the writer thread, or after a write in this one)."""
        for region, mark in saved.coeng_marks.items():
            self.coeng_saved[region] = max(self.coeng_saved[region], mark)

    def _save_users(self, max_users: int | None) -> bool:
        catalog = self.catalog
        budget = max_users if max_users is not None else sum(len(d) for d in self.dirty_users.values())
        share = max(1, budget // len(catalog.regions))
        done = True
        for region, dirty_users in self.dirty_users.items():
            # The oldest changes first, without copying the rest; a user whose state includes events
            # past the committed co-engagement mark waits for the next aggregates (at most a few
            # times `share` users are looked at).
            saved_mark = self.coeng_saved[region]
            batch = [(uid, u) for uid, u in islice(dirty_users.items(), 4 * share) if u.state.seq <= saved_mark][:share]
            states = {uid: dumps(u.state, catalog) for uid, u in batch}
            for uid, u in batch:
                u.dirty_since = 0
                del dirty_users[uid]
            rest = next(iter(dirty_users.values()), None)
            mark = rest.dirty_since - 1 if rest is not None else self.event_mark[region]
            self.store.save_user_states(region, states, min(mark, saved_mark))
            done = done and rest is None
        self._trim()
        return done
