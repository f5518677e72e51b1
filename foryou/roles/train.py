"""The train role: a process of its own that follows the durable log and publishes the model.

It holds a replica of the live state that it never saves (the catalogue as the snapshot or the store
has it, and item counters and trending moved on by the events it reads, so that an example's item
features are as of before it). Each step it takes in order:

1. the catalogue's changes (`items_since` the version it last saw): new items, edits, takedowns;
2. the refresh table: users a server started afresh or is erasing (`Learner.sync_skips`);
3. the served rows appended since the last step, into the join buffers (impressions without a play);
4. a page of each region's event log, learned, then applied to its item counters;
5. the learner's tick: joins that closed, expiry, and a published version every
   `learning.publish_interval_s` (rows, dense weights, then the version: `Learner.checkpoint`).

A kill at any point loses only what was not published: the next start restores the last published
version and learns the log from its marks again. Nothing it reads is changed by it, except the rows
of the refresh table it is done with and the model's rows and blobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from foryou.config import Settings
from foryou.follower import LogFollower
from foryou.learning import Learner
from foryou.live import Live
from foryou.privacy import privacy_secret
from foryou.store import Store, open_store

PAGE = 4096  # events of a region's log learned per step
SERVED_PAGE = 16384  # served rows taken per step


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

    @classmethod
    def open(cls, settings: Settings, store_url: str | None = None, seed: int = 0,
             clock: Callable[[], float] = time.time) -> Trainer:
        url = store_url or str(Path(settings.server.data))
        trainer = cls(open_store(url, settings.server.regions, privacy_secret(settings)), settings, clock, seed)
        trainer.load()
        return trainer

    def load(self) -> None:
        self.catalogue_version = self.store.catalogue_version()  # before: an upsert during the load comes again
        self.live.load(users=False)
        self.learner.load()

    def step(self) -> bool:
        """One round of the loop above; returns whether more of the log waits."""
        live, learner = self.live, self.learner
        self._take_catalogue()
        learner.sync_skips()
        self._take_served()
        more = False
        for region in live.catalog.regions:
            taken = self.follower.take_page(region, PAGE)
            # The log's end as far as this process knows: the joins close by time only once it is reached.
            live.event_mark[region] = self.follower.position(region) + (taken == PAGE)
            more = more or taken == PAGE
        learner.tick(self.clock())
        self.steps += 1
        return more

    def _take_catalogue(self) -> None:
        version = self.store.catalogue_version()
        if version == self.catalogue_version:
            return
        changed = self.store.items_since(self.catalogue_version)
        self.catalogue_version = version
        catalog = self.live.catalog
        catalog.put_many(changed)
        self.live.trending.ensure(len(catalog))

    def _take_served(self) -> None:
        live, joins, index = self.live, self.learner.joins, self.live.catalog.index
        for region in live.catalog.regions:
            rows = list(islice(self.store.served_after(region, live.served_mark[region]), SERVED_PAGE))
            for row in rows:
                if row.item in index and self.learner.settings.enabled:
                    joins.add_served(region, row.user, [index[row.item]], row.ts)
            live.count_served(region, rows)

    def run(self, stopping: Callable[[], bool]) -> None:
        """Step until `stopping()`; then publish what was learned and close. Caught up, it steps twice
        per publishing interval: a step's cost is mostly fixed (numpy's per-call work), so learning
        what came in a quarter second at once costs a fraction of learning it in small bites, and an
        event still reaches a published version within about one interval plus a step."""
        pause = self.settings.learning.publish_interval_s / 2
        try:
            while not stopping():
                started = time.monotonic()
                if not self.step():
                    time.sleep(max(0.0, pause - (time.monotonic() - started)))
        finally:
            self.close()

    def close(self) -> None:
        self.learner.checkpoint()
        self.store.close()
