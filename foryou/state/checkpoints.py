"""Checkpoints of the live state: the item aggregates (handed to a writer thread in a server) and the
users' interest state in bounded slices, with watermarks that make a replay after a crash apply
exactly what is missing; and the catalogue's snapshot at a clean stop."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from itertools import islice, takewhile
from pathlib import Path

import numpy as np

from foryou import snapshot
from foryou.catalog import STATS
from foryou.interest import UserState, dumps
from foryou.state.fields import StateFields
from foryou.store.writer import AggregateCheckpoint, AggregateWriter

_MAX_SLICE = 1_000


class Checkpoints(StateFields):
    def maybe_checkpoint(self, max_users: int = 200) -> bool:
        """The periodic work's (never a request's): every `checkpoint_interval_s`, the item aggregates,
        and a bounded slice of the users whose state has been unsaved for `user_save_after_s`, so that no
        tick holds the server for a whole checkpoint; the slices continue, a tick each, until no such
        user is left. Decides the new-video pools that are due. Once an hour, idempotency keys past
        their time to live are dropped. Returns whether slices are still due."""
        now = self.clock()
        if now - self._last_purge >= 3600:  # keys are remembered from acceptance, in the engine's time
            self._last_purge = now
            self.store.forget_event_ids(now - self.settings.signals.event_id_ttl_days * 86400)
        if self.items_owner:  # the pools' decisions are their writer's (a server takes the trainer's)
            self.dirty_items.update(self.pools.tick(self.catalog, now, self.totals()))
        pending = any(self.dirty_users.values())
        due = self.clock() - self.last_checkpoint >= self.settings.store.checkpoint_interval_s
        # Users with unsaved state cannot leave the cache: when more of them arrive than the slices
        # save (thousands of users a second at 1M items), the cache outgrows its bound (+2 GB in a
        # minute, measured). Then the slices grow, up to _MAX_SLICE users (~30 ms) a tick.
        over = len(self.users) - self.settings.store.user_cache
        if over > 0:
            max_users = min(max(max_users, over), _MAX_SLICE)
        if due or (pending and (self._in_progress or over > 0)):
            # The item aggregates once per interval; the users' slices continue between (under a
            # steady load they would otherwise never end, and each would save every item again).
            # Users a while after their first unsaved change, or the oldest when the cache is over
            # its bound: a user active all along is then saved once a minute, not every interval.
            saved_before = None if over > 0 else now - self.settings.store.user_save_after_s
            self._in_progress = not self.checkpoint(max_users, wait=False, items=due, saved_before=saved_before)
        return self._in_progress

    def save_snapshot(self) -> None:
        """At a clean stop, once the aggregates are saved: the catalogue and the item aggregates as of
        now, for the next start to load instead of reading them from the store."""
        directory = Path(self.settings.server.data)
        if directory.is_dir() and self.catalog.serving:  # a trainer's copy lacks what feeds read
            snapshot.save(self.catalog, directory, self.store.catalogue_version())
            self.save_aggregates_snapshot()

    def save_aggregates_snapshot(self) -> None:
        """At a clean stop of the aggregates' writer, once they are saved: the item aggregates as of
        now, for the next start to load instead of reading them from the store (only while what is
        held is what was saved under the token: nothing changed since)."""
        directory, catalog, n = Path(self.settings.server.data), self.catalog, len(self.catalog)
        if (directory.is_dir() and self.items_owner and self.coeng_on and self.aggregates_token
                and not (self.dirty_items or self.coeng.dirty or any(self.trending.dirty.values()))):
            self.coeng.ensure(n)
            snapshot.save_aggregates(directory, self.aggregates_token, snapshot.Aggregates(
                catalog.stats[:n, : len(STATS)], {r: self.trending.scores[r][:n] for r in catalog.regions},
                self.coeng.nb[:n], self.coeng.w[:n]))

    def write_beside(self, writer: AggregateWriter) -> None:
        """From now on checkpoints hand the item aggregates to `writer`, a thread of their own (a
        server's): the event loop only copies them."""
        self.writer = writer
        writer.start()

    def checkpoint(self, max_users: int | None = None, wait: bool = True, items: bool = True,
                   saved_before: float | None = None) -> bool:
        """Save dirty item aggregates (unless not `items`) and (up to `max_users`, oldest first) users'
        interest state (with `saved_before`, only users whose state first changed before that time).
        Each region's state watermark stays below the oldest change still unsaved, so replay after a
        crash re-applies exactly what is missing. Returns True when no user is left to save. With a
        writer beside (`write_beside`) the aggregates are written by it; `wait`: before returning."""
        if items:
            self._save_items(wait)
        return self._save_users(max_users, saved_before)

    def _save_items(self, wait: bool) -> None:
        if not self.items_owner:  # a server's: the trainer writes them (published.py); nothing to save
            self.dirty_items = set()
            self.coeng.dirty = set()
            for dirty in self.trending.dirty.values():
                dirty.clear()
            return
        saved = self.take_items()
        if self.writer is not None:
            self.writer.submit(saved)
            if wait:
                self.writer.flush()
        else:
            saved.save(self.store, self.catalog.ids)

    def take_items(self) -> AggregateCheckpoint:
        """A copy of the item aggregates changed since the last (rows, trend scores, co-engagement
        rows), with the watermarks and meta they are saved with; from now on they count as saved."""
        catalog, trending = self.catalog, self.trending
        width, n = len(STATS), len(catalog)
        idx = np.fromiter(self.dirty_items, np.int64, len(self.dirty_items))
        trend = {}
        for r, d in trending.dirty.items():
            where = np.fromiter((i for i in d if i < n), np.int64)
            trend[r] = (where, trending.scores[r][where].astype(np.float64))
        marks = {r: (self.item_mark[r], self.served_mark[r]) for r in catalog.regions}
        coeng = self.coeng.take_dirty()
        self.aggregates_token = uuid.uuid4().hex  # what a snapshot of the aggregates copies (`save_snapshot`)
        meta = {"trend_t0": repr(trending.t0), "pool_reference": self.pools.dumps(),
                snapshot.TOKEN: self.aggregates_token}
        saved = AggregateCheckpoint(idx, catalog.stats[idx, :width].astype(np.float64), trend, coeng, marks, meta)
        self.dirty_items = set()  # handed over: a failed write is the writer's to retry, never ours again
        for dirty in trending.dirty.values():
            dirty.clear()
        self.last_checkpoint = self.clock()
        return saved

    def state_blobs(self, states: Mapping[str, UserState]) -> dict[str, bytes]:
        """Users' states as saved: binary, with vocabulary codes, so the codes they use are recorded in
        the store first (a crash between the two leaves codes no state uses, never the reverse)."""
        for kind, saved in self.vocab_saved.items():
            names = getattr(self.catalog, kind).names
            if len(names) > saved:
                self.store.save_vocab(kind, saved, names[saved:])
                self.vocab_saved[kind] = len(names)
        return {uid: dumps(state, self.catalog) for uid, state in states.items()}

    def _save_users(self, max_users: int | None, saved_before: float | None = None) -> bool:
        catalog = self.catalog
        budget = max_users if max_users is not None else sum(len(d) for d in self.dirty_users.values())
        share = max(1, budget // len(catalog.regions))
        done = True
        for region, dirty_users in self.dirty_users.items():
            batch = list(islice(dirty_users.items(), share))  # the oldest changes first
            if saved_before is not None:
                batch = list(takewhile(lambda kv: kv[1].dirty_at <= saved_before, batch))
            states = self.state_blobs({uid: u.state for uid, u in batch})
            for uid, u in batch:
                u.dirty_since = 0
                del dirty_users[uid]
            rest = next(iter(dirty_users.values()), None)
            mark = rest.dirty_since - 1 if rest is not None else self.event_mark[region]
            self.store.save_user_states(region, states, mark)
            done = done and (rest is None or (saved_before is not None and rest.dirty_at > saved_before))
        self._trim()
        return done
