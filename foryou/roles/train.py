"""The train role: a process of its own that follows the durable log and publishes the model.

It holds the catalogue as the snapshot or the store has it, and is the one writer of the item
aggregates (counters, trending, co-engagement, the new-video pools), moved on by the events and served
rows it reads (so that an example's item features are as of before it). Each step it takes in order:

1. a page of each region's event log and of its served rows (read first: the catalogue read after
   them knows every item they name);
2. the catalogue's changes (`items_since` the version it last saw): new items, edits, takedowns;
3. the refresh table: users a server started afresh or is erasing (`Learner.sync_skips`);
4. the served rows, into the join buffers (impressions without a play); the events, learned, then
   applied to its item counters (a user erased meanwhile is left out: `Learner._drop_erased`);
5. the learner's tick: joins that closed, expiry, and a published version every
   `learning.publish_interval_s` (rows, dense weights, then the version: `Learner.checkpoint`);
6. the pools' decisions, then the item aggregates' rows that changed, published as a delta for servers
   (`foryou/state/published.py`) and saved to the store every `store.checkpoint_interval_s`.

A kill at any point loses only what was not published or saved: the next start restores the last
published version and learns the log from its marks again, and the aggregates from their saved
watermarks (publishing every row that replay changes). Nothing it reads is changed by it, except the
rows of the refresh table it is done with, the model's rows and blobs and the item aggregates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from foryou.config import Settings
from foryou.follower import LogFollower
from foryou.learning import Learner
from foryou.privacy import privacy_secret
from foryou.state import Live
from foryou.state.published import AggregatePublisher
from foryou.store import Store, open_store
from foryou.store.writer import AggregateCheckpoint
from foryou.types import ServedRecord

log = logging.getLogger("foryou.trainer")

PAGE = 4096  # events of a region's log learned per step
SERVED_PAGE = 16384  # served rows taken per step


def run_behind(niceness: int) -> None:
    """Lower this process's CPU priority by `niceness`: on two cores the server's requests and the
    trainer contend, and requests come first (the trainer catches up as they pause). A process that
    leads a session of its own (a server's child) is also its own Linux autogroup, and a plain nice
    weighs nothing against processes of other groups: the group's niceness is set too."""
    if niceness <= 0:
        return
    os.nice(niceness)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):  # not Linux, or no autogroups
            Path("/proc/self/autogroup").write_text(str(min(niceness, 19)))


class Trainer:
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time,
                 seed: int = 0) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.live = Live(store, settings, clock)
        self.learner = Learner(self.live, seed, serves=False)
        self.follower = LogFollower(self.live, self.learner)
        self.catalogue_version = 0
        self.steps = 0
        self.aggregates = AggregatePublisher(store)
        self.unsaved: AggregateCheckpoint | None = None  # published, not saved to the store yet
        self.saved_at = 0.0
        self.items_published_at = 0.0

    @classmethod
    def open(cls, settings: Settings, store_url: str | None = None, seed: int = 0,
             clock: Callable[[], float] = time.time) -> Trainer:
        url = store_url or str(Path(settings.server.data))
        # Without a WAL-folding thread: the server's folds, and one here could make an erasure's
        # truncation of the WAL fail.
        store = open_store(url, settings.server.regions, privacy_secret(settings), second=True)
        trainer = cls(store, settings, clock, seed)
        trainer.load()
        return trainer

    def load(self) -> None:
        self.catalogue_version = self.store.catalogue_version()  # before: an upsert during the load comes again
        self.live.load(users=False, coengagement=True)
        self.learner.load()
        self.aggregates.load()
        self.saved_at = self.clock()

    def step(self) -> bool:
        """One round of the loop above; returns whether more of the log waits."""
        live, learner, store = self.live, self.learner, self.store
        regions = live.catalog.regions
        # The log first, then the catalogue: an item an event or a served row names was upserted
        # before that was logged, so the catalogue read after them knows it.
        pages = {r: list(store.events_after(r, self.follower.position(r), PAGE)) for r in regions}
        served = {r: list(islice(store.served_after(r, live.served_mark[r]), SERVED_PAGE)) for r in regions}
        self._take_catalogue()
        learner.sync_skips()
        for region, rows in served.items():
            self._take_served(region, rows)
        more = False
        for region, page in pages.items():
            if page:
                self.follower.take_read(region, page)
            # The log's end as far as this process knows: the joins close by time only once it is reached.
            live.event_mark[region] = self.follower.position(region) + (len(page) == PAGE)
            more = more or len(page) == PAGE
        now = self.clock()
        learner.tick(now)
        live.dirty_items.update(live.pools.tick(live.catalog, now, live.totals()))
        # Once an interval (as the model): behind the log it steps without a pause, and a delta per step
        # cost 15% of its time at 25,000 events/s (py-spy; 11% at 10,000 events/s twice an interval).
        if now - self.items_published_at >= self.settings.learning.publish_interval_s * 0.9:
            self.publish_items(now)
        self.steps += 1
        return more

    def publish_items(self, now: float, save: bool = False) -> None:
        """The item aggregates' changed rows as a delta for servers; saved to the store when due (or `save`)."""
        live = self.live
        self.items_published_at = now
        taken = live.take_items()
        self.aggregates.publish(taken, live.catalog.ids, live.coeng.k)
        self.unsaved = taken if self.unsaved is None else self.unsaved.then(taken)
        if save or now - self.saved_at >= self.settings.store.checkpoint_interval_s:
            self.unsaved.save(self.store, live.catalog.ids)
            self.unsaved, self.saved_at = None, now

    def _take_catalogue(self) -> None:
        version = self.store.catalogue_version()
        if version == self.catalogue_version:
            return
        changed = self.store.items_since(self.catalogue_version)
        self.catalogue_version = version
        live = self.live
        catalog, before = live.catalog, len(live.catalog)
        catalog.put_many(changed)
        live.trending.ensure(len(catalog))
        live.dirty_items.update(live.pools.admit(catalog, list(range(before, len(catalog))), self.clock()))

    def _take_served(self, region: str, rows: list[ServedRecord]) -> None:
        joins, index = self.learner.joins, self.live.catalog.index
        if self.learner.settings.enabled:
            for row in rows:
                if row.item in index:
                    joins.add_served(region, row.user, [index[row.item]], row.ts)
        counted = self.live.count_served(region, rows)
        if counted:  # full pools go to evaluation
            self.live.pools.served(self.live.catalog, counted, rows[-1].ts)

    def run(self, stopping: Callable[[], bool]) -> None:
        """Step until `stopping()`; then publish what was learned and close. Caught up, it steps once
        per publishing interval and publishes at the end of the step (`Learner.checkpoint_s` is half
        the interval, so a step a little early still publishes): an event is read within an interval
        and published by the same step. Stepping twice as often and publishing once an interval had
        passed left publications 0.5 or 0.75 s apart (the check compared the end of a step with the end
        of the one that published: a step with less work came short) and an event learned waiting for
        one; a step's cost is also mostly fixed (numpy's per-call work), so fewer, larger steps learn
        the same for less. Behind the log, it steps without a pause and publishes every half interval."""
        pause = self.settings.learning.publish_interval_s
        try:
            while not stopping():
                started = time.monotonic()
                try:
                    more = self.step()
                except sqlite3.OperationalError as exc:  # a lock held too long (an erasure's rebuild): later
                    log.warning("a training step could not read or write the store (%s); trying again", exc)
                    time.sleep(1.0)
                    continue
                if not more:
                    time.sleep(max(0.0, pause - (time.monotonic() - started)))
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.learner.checkpoint()
            self.publish_items(self.clock(), save=True)
            self.live.save_aggregates_snapshot()
        finally:
            self.store.close()
