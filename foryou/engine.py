"""The engine: opens the store, loads the live state and holds the services. It holds parts; the
behaviour lives in the services."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

from foryou.config import Settings
from foryou.feed import FeedService
from foryou.follower import LogFollower
from foryou.ingest import IngestService
from foryou.items import ItemService
from foryou.learning import Learner
from foryou.learning.index_file import INDEX_FILE
from foryou.learning.replica import ModelReplica
from foryou.periodic import Periodic
from foryou.privacy import ErasureService, ExportService, RetentionService, Tombstones, open_audit, privacy_secret
from foryou.roles.supervise import TrainerProcess
from foryou.state import Live
from foryou.state.published import AggregateReader
from foryou.store import Store, open_store
from foryou.store.writer import AggregateWriter
from foryou.users import UserService

TICK_S = 0.5  # how often the server runs the periodic work, between requests


class Engine:
    """`Engine.open(settings)` -> a ready engine. Pass `clock` to run in event time (replay,
    simulation); it defaults to the wall clock. Not thread-safe: call it from one thread."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time,
                 seed: int | None = None, role: str = "all") -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        # "all": trains and writes the item aggregates in this process; "serve": a trainer process does
        # both and publishes them (foryou/roles); "load": writes the item aggregates and leaves the
        # training to a trainer process (the bulk loader, which runs alone on the data)
        self.role = role
        self.live = Live(store, settings, clock)
        self.learner = Learner(self.live, seed or 0) if role == "all" else ModelReplica(self.live, seed or 0)
        self.audit = open_audit(settings)
        self.tombstones = Tombstones(self.audit.key)
        # The item aggregates' writer here (the log follower), or the reader of a trainer's
        self.follower = LogFollower(self.live, self.learner if role == "all" else None) if role != "serve" else None
        self.aggregates = AggregateReader(self.live, self.live.reload_items) if role == "serve" else None
        self.live.items_owner = role != "serve"
        self.items = ItemService(self.live, self.learner, self.follower)
        self.users = UserService(self.live, self.learner, self.audit, self.tombstones)
        self.events = IngestService(self.live, self.learner, self.tombstones, self.follower)
        self.feeds = FeedService(self.live, self.learner, seed=seed, audit=self.audit, tombstones=self.tombstones)
        self.privacy = ExportService(self.live, self.learner, self.audit)
        self.retention = RetentionService(self.live, self.learner, self.audit)
        self.erasure = ErasureService(self.live, self.learner, self.audit, self.tombstones)
        self.reopen: Callable[[], Store] | None = None  # another handle on the same store
        self.trainer: TrainerProcess | None = None  # the serve role's child trainer, when it started one
        self._follow_page: int | None = None  # events a run of the "follow" task takes (None: all that wait)
        tasks = {"follow": self._follow}
        if isinstance(self.learner, ModelReplica):  # polled as often as the follower runs: the lag counts it
            tasks["model"] = lambda _: self.learner.poll()  # type: ignore[attr-defined]
        self.periodic = Periodic({**tasks, "learning": self.learner.tick,
                                  "checkpoint": lambda _: self.live.maybe_checkpoint(),
                                  "retention": self._retention}, TICK_S)

    @classmethod
    def open(cls, settings: Settings | None = None, clock: Callable[[], float] = time.time,
             store_url: str | None = None, seed: int | None = None, catch_up: bool = True,
             role: str = "all") -> Engine:
        """Load the store's state. With `catch_up` the model learns what the log holds past its
        checkpoint before this returns; without, that is left to the log follower (a server runs it
        beside its first requests, so that a restart after a crash does not wait for it). With role
        "serve" the model is what a trainer process publishes (`foryou/roles`)."""
        settings = settings or Settings()
        url = store_url or str(Path(settings.server.data))
        secret = privacy_secret(settings)
        engine = cls(open_store(url, settings.server.regions, secret), settings, clock, seed, role)
        if not url.startswith("memory://"):  # a second handle, for a writer thread (`follow_beside`)
            engine.reopen = lambda: open_store(url, settings.server.regions, secret, second=True)
        if engine.aggregates is not None:
            engine.aggregates.start()
        engine.live.load()
        if engine.aggregates is not None:
            engine.aggregates.loaded()
        engine.learner.load()
        if catch_up:
            engine._follow(0.0)
        if role == "all":  # a server's replica builds what its saved index lacks beside its requests
            engine.learner.refresh_index()
        engine.tombstones.load(engine.store)
        # What was just loaded (the catalogue, vocabularies, indexes: at 1M items, 1.5M objects that
        # the cyclic collector would walk on every full collection) lives as long as the engine. Out
        # of the collector's way: ingestion at 1M items went from 178 to 55 µs an event. (No collection
        # first: in a test process that made every open ~0.2 s slower.)
        gc.freeze()
        return engine

    @classmethod
    def relearn(cls, settings: Settings, clock: Callable[[], float] = time.time, seed: int | None = None) -> Engine:
        """Drop the learned model and open the engine, which learns it again from the log as it is now:
        what the model took from events since erased or past retention goes with them. Run it with no
        server on the data directory; it takes as long as learning the whole log."""
        store = open_store(str(Path(settings.server.data)), settings.server.regions)
        try:
            store.drop_model()
        finally:
            store.close()
        (Path(settings.server.data) / INDEX_FILE).unlink(missing_ok=True)
        return cls.open(settings, clock, seed=seed)

    def _follow(self, _: float) -> bool:
        """Follow the log (the item aggregates' writer here) or take a trainer's deltas; returns
        whether more wait."""
        if self.follower is not None:
            return self.follower.follow(self._follow_page)
        assert self.aggregates is not None
        # beside the requests, a delta a call (one at 1M items can take ~10 ms): the loop calls again
        # while its turn lasts; a step driver takes them all
        return self.aggregates.poll(1 if self._follow_page is not None else None)

    def items_behind(self, region: str) -> int:
        """How far the item aggregates held here are behind the region's log, as this process knows it."""
        if self.follower is not None:
            return self.follower.behind(region)
        assert self.aggregates is not None
        return self.aggregates.behind(region)

    def follow_beside(self, page: int) -> None:
        """From now on a request that appends events does not wait for the log follower: the caller
        runs the periodic task "follow" beside the requests (the server does, on its event loop), and
        each run takes at most `page` events of a region's log."""
        self.events.follower = None
        self._follow_page = page
        if self.reopen is not None and self.live.writer is None and self.live.items_owner:
            live = self.live
            live.write_beside(AggregateWriter(self.reopen, lambda: live.catalog.ids))

    def tick(self, now: float, strict: bool = False) -> None:
        """Periodic work between requests (the server runs it every `TICK_S`; a step driver, such as
        the simulator, at its own pace): the log follower (when it runs beside), the trainer's joins,
        index and checkpoints, the live state's
        checkpoint (and the new-video pools' decisions), and retention once an hour when it is on. A
        task that raises is logged, counted and retried later, and the others go on (periodic.py);
        `strict` raises instead."""
        self.periodic.run(now, strict)

    def _retention(self, now: float) -> None:
        if self.retention.due(now):
            self.retention.run(now)

    def checkpoint(self) -> None:
        """Save all derived state: the live state's and the learned model's."""
        self.live.checkpoint()
        self.learner.checkpoint()

    def close(self) -> None:
        """Take the log's tail (the follower), checkpoint derived state, save the ANN index and the
        catalogue's snapshot, and close the store."""
        try:
            if self.follower is not None:
                self.follower.follow()
            self.checkpoint()
            self.learner.save_index()
            self.live.save_snapshot()
        finally:
            if self.live.writer is not None:
                self.live.writer.stop()
            self.store.close()
            gc.unfreeze()  # collectable again (tests open many engines in one process)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
