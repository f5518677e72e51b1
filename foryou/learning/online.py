"""The online trainer: learns from the event log in order, serves the model it learned, and
checkpoints it to the store.

Requests never train: the log follower (`foryou/follower.py`) hands the trainer each page of the log
before the item aggregates move on, so an example's item features are as of before it. What a view
says (completion, watch quantile, early skip) is learned at once; its action labels wait in the join
buffers (`joins.py`) for `join_window_s`. The request that appends events only samples the duel
(`before_apply`): the fallback's side of it needs the user's interest state as of before the event,
copied from memory when the user is held, else read from the store when scored (a few a turn).

A training step whose loss is not finite or explodes is dropped and counted, never applied. The model
serves only once healthy: enough examples learned and most recent steps accepted.

After a crash the trainer restores its last checkpoint and the follower re-learns the log from the
checkpoint's watermark. What waited in the join buffer at the crash is lost (a few seconds of delayed labels).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from foryou.columns import EventColumns
from foryou.interest import decay
from foryou.learning import publication
from foryou.learning.duel import Duel, Samples
from foryou.learning.features import HEAD, popularity
from foryou.learning.indexing import IndexUpkeep
from foryou.learning.joins import ExampleList, Joins
from foryou.learning.model import Examples, Model
from foryou.metrics import SLOW_BUCKETS, Histogram
from foryou.ranking import HeuristicRanker, value
from foryou.retrieval.ann import VectorIndex, make_index
from foryou.signals import completion_mask, early_swipe_mask
from foryou.state import Live
from foryou.types import EventRecord

_WARM_STEPS = 20  # steps before the loss average is trusted to judge a step
_INLINE_INDEX = 32  # a feed request re-indexes only when at most this many items are waiting
_TICK_INDEX_S = 0.02  # time a tick may spend re-indexing (the event loop waits meanwhile)
_RELAPSE = 20  # steps dropped in a row after which a higher loss is taken as the new normal
_EXPIRE_EVERY_S = 3600.0
log = logging.getLogger("foryou.learning")
SKIP_TABLE = "refreshed"  # per region: users started afresh -> the last seq of theirs never to be learned
VERSION_BLOB = "model.version"  # the published version alone: what a server polls
_ACCEPTED_MAX = 100_000  # batches awaiting the lag's measure, at most (no trainer publishing: the oldest go)
_PUBLISH_SLICE = 256  # rows per write transaction of a publication
_TRAINER_IDLE_S = 900.0  # a trainer process lets a user's row leave memory after this long unused


def dense_version(blob: bytes) -> int:
    """The model version of a saved dense blob (`Learner.dense_blob`); 0 for one of another format."""
    saved = np.load(io.BytesIO(blob))
    return int(json.loads(bytes(saved["header"]).decode())["version"]) if "header" in saved.files else 0


class Learner(IndexUpkeep):
    """The trainer. `serves`: it also answers the requests of this process (retrieval from its own
    ANN index); a trainer process (`foryou/roles/train.py`) does not, and publishes instead."""

    def __init__(self, live: Live, seed: int = 0, serves: bool = True) -> None:
        s = live.settings.learning
        self.live = live
        self.settings = s
        self.serves = serves
        # A trainer process publishes at the end of each step of its loop, one per interval (`Trainer.run`)
        self.checkpoint_s = s.checkpoint_interval_s if serves else s.publish_interval_s / 2
        self.model = Model(live.catalog.regions, s.dim, (s.popularity_weight, s.trending_weight), s.memory, s.lr,
                           s.dense_lr, 1e-4, s.min_count, s.ttl_days * 86400.0, seed)
        self.index: VectorIndex = make_index(s.dim + 1, s.index)
        self.joins = Joins(s.join_window_s)
        self.marks = {r: 0 for r in live.catalog.regions}  # log seq learned through, per region
        self.version = 0
        self.examples = 0
        self.events = 0
        self.bad_steps = 0
        self.recent_bad = 0.0
        self.loss = 0.0
        self.steps = 0
        self.lag_s = 0.0  # the latest batch's, and every batch's (`lag`): acceptance to learned
        self.lag = Histogram(SLOW_BUCKETS)
        self.dirty_items: dict[int, None] = {}  # items to re-index, oldest change first
        self._rebuilding: threading.Thread | None = None  # a new index being built (`refresh_index`)
        self._rebuilt: VectorIndex | None = None
        self._meanwhile: set[int] = set()
        self._stop_rebuild = threading.Event()
        self._dropped_in_row = 0
        self._last_checkpoint = 0.0
        self._last_expire = 0.0
        self._expiring: dict[str, str] = {}  # region -> the last key an expiry walk of saved user rows reached
        self.duel = Duel(s.duel_window)
        self.publisher = publication.Publisher()
        self._rows_to_convert = False  # item-side rows saved as rows by an earlier version, restored
        self.fallback = HeuristicRanker()
        self._rng = np.random.default_rng(seed)
        self.samples = Samples(live.catalog.regions)  # the duel's, appended and not scored yet
        # (last seq, wall time) of each batch appended and not learned yet, per region, for the lag
        self._accepted: dict[str, deque[tuple[int, float]]] = {r: deque(maxlen=_ACCEPTED_MAX)
                                                               for r in live.catalog.regions}
        self._skip: dict[tuple[str, str], int] = {}  # (region, user) refreshed or erased -> seq learned no further
        self._skips_seen: dict[tuple[str, str], int] = {}  # refresh marks a trainer process has taken
        self._skips_done: dict[tuple[str, str], int] = {}  # learned past: deleted after the next checkpoint

    @property
    def healthy(self) -> bool:
        """Trained enough, training steps sound, and ranking completions better than the fallback."""
        return (self.settings.enabled and self.examples >= self.settings.min_examples
                and self.recent_bad < 0.5 and bool(np.isfinite(self.model.weights).all())
                and (self.duel.learned_wins or not self.settings.duel))

    # -- learning --
    def before_apply(self, region: str, events: EventColumns, seqs: Sequence[int],
                     accepted: float | None = None) -> None:
        """Called by the request that appended `events` (at `seqs`), before their users' interest state
        moves on: sample the duel, snapshotting what the fallback needs, and note when they were
        accepted (wall time), for the lag."""
        if not self.settings.enabled or not len(events):
            return
        self._accepted[region].append((seqs[-1], time.time() if accepted is None else accepted))
        if not self.settings.duel or self.examples < self.settings.min_examples:
            return
        self.samples.draw(self.live, region, events, seqs, self._rng)

    def learn_many(self, region: str, events: Sequence[EventRecord], seqs: Sequence[int] | None = None) -> None:
        """Learn events of `region`'s log, in order (`seqs`: their log positions, past `marks[region]`)."""
        if not self.settings.enabled or not events:
            return
        if seqs and self._skip:
            kept = [k for k, e in enumerate(events) if seqs[k] > self._skip.get((region, e.user), 0)]
            if len(kept) < len(events):
                events, seqs = [events[k] for k in kept], [seqs[k] for k in kept]
        duration = self.live.catalog.duration_l
        if seqs:
            self._score_both(region, seqs[-1])
        if not events:
            return
        out = ExampleList()
        view_at, watch = self.joins.add_events(region, events, self.live.catalog.index, out)
        now = max(e.ts for e in events)
        self.joins.close(now, out)
        ex = out.build()
        if view_at:
            at = np.array(view_at)
            w = np.array(watch)
            d = np.array([duration[i] for i in ex.items[at].tolist()])
            complete, early = completion_mask(w, d), early_swipe_mask(w, d)
            ex.labels[at, HEAD["complete"]] = complete
            ex.labels[at, HEAD["skip"]] = early
            ex.labels[at, HEAD["watch"]] = self.model.watch.label(w, d)
            ex.retrieval[at] = np.where(complete, 1, np.where(early, 0, -1))
            self.model.watch.learn_many(w, d)
        self._train(ex, now)
        self.events += len(events)

    def learned_through(self, region: str, seq: int) -> None:
        """The follower learned `region`'s log through `seq`."""
        self.marks[region] = max(self.marks[region], seq)
        accepted = self._accepted[region]
        now = time.time()
        while accepted and accepted[0][0] <= seq:
            self.lag_s = now - accepted.popleft()[1]
            self.lag.observe(self.lag_s)
        done = [k for k, v in self._skip.items() if k[0] == region and v <= self.marks[region]]
        for k in done:  # their refresh marks go once a checkpoint with these marks is saved
            self._skips_done[k] = self._skip.pop(k)

    def _score_both(self, region: str, through: int, reads: int | None = None) -> None:
        """The duel: the sampled completed views up to seq `through`, each with random catalogue items,
        scored by both rankers before anything learns them (the fallback with the user's interest state
        as sampled, before the view)."""
        live, weights = self.live, self.live.settings.weights
        totals, now = live.totals(), live.clock()
        for user, idx, state in self.samples.due(live, region, through, reads):
            mine = self.fallback.predict(live.catalog, state, idx, decay(state, now, live.tau), totals)
            self.duel.record(value(self.predict(region, user, idx), weights), value(mine, weights))

    def record_served(self, region: str, user: str, items: Sequence[int], now: float) -> None:
        if self.settings.enabled:
            self.joins.add_served(region, user, items, now)

    def _drop_erased(self, ex: Examples) -> Examples:
        """A trainer process: leave out the examples of users no longer held (erased by a server since
        their events were read), and forget their open joins."""
        gone: set[tuple[str, str]] = set()
        for region in set(ex.regions):
            users = list({u for u, r in zip(ex.users, ex.regions, strict=True) if r == region})
            held = self.live.store.get_users(region, users)
            gone.update((region, u) for u in users if u not in held)
        if not gone:
            return ex
        for _, user in gone:
            self.joins.forget(user)
        keep = np.array([(r, u) not in gone for r, u in zip(ex.regions, ex.users, strict=True)])
        at = np.flatnonzero(keep).tolist()
        return Examples([ex.regions[k] for k in at], [ex.users[k] for k in at], ex.items[keep], ex.labels[keep],
                        ex.mask[keep], ex.retrieval[keep])

    def _train(self, ex: Examples, now: float) -> None:
        if not self.serves and len(ex.items):
            ex = self._drop_erased(ex)
        size = max(self.settings.batch_size, 1)
        totals = self.live.totals()
        catalog = self.live.catalog
        for region in set(ex.regions):  # rows of users back after a while: from the store, before training
            self.load_users(region, [u for u, r in zip(ex.users, ex.regions, strict=True) if r == region])
        for lo in range(0, len(ex.items), size):
            part = Examples(ex.regions[lo:lo + size], ex.users[lo:lo + size], ex.items[lo:lo + size],
                            ex.labels[lo:lo + size], ex.mask[lo:lo + size], ex.retrieval[lo:lo + size])
            step = self.model.gradients(catalog, part, now, totals, self.live.clock())
            loss = step.retrieval_loss + step.ranking_loss
            # A step far above the recent loss is dropped, unless that has gone on for _RELAPSE steps:
            # then the data changed, not the step, and refusing it would lock training out for good.
            exploding = self.steps >= _WARM_STEPS and loss > 4 * self.loss and self._dropped_in_row < _RELAPSE
            bad = not step.finite() or loss > self.settings.max_loss or exploding
            self.recent_bad = 0.9 * self.recent_bad + 0.1 * bad
            if bad:
                self.bad_steps += 1
                self._dropped_in_row += 1
                continue
            if self._dropped_in_row >= _RELAPSE:
                self.loss = loss
            self._dropped_in_row = 0
            self.model.apply(step)
            self.loss = loss if self.steps == 0 else 0.95 * self.loss + 0.05 * loss
            self.steps += 1
            self.version += 1
            self.examples += len(part.items)
            if self.serves:
                self.dirty_items.update(dict.fromkeys(step.touched.tolist()))

    def tick(self, now: float) -> None:
        """Periodic work between requests: close joins, refresh the index, expire idle rows, and
        checkpoint when due."""
        if not self.settings.enabled:
            return
        out = ExampleList()
        if all(self.marks[r] >= self.live.event_mark[r] for r in self.marks):
            # Joins close by time only once the follower has learned what came: while it is behind,
            # a like waiting in the log would find its view's labels already closed without it.
            self.joins.close(now, out)
        if out.rows:
            self._train(out.build(), now)
        self.refresh_index(_TICK_INDEX_S)
        if now - self._last_expire >= _EXPIRE_EVERY_S:
            self._last_expire = now
            for table in self.model.tables().values():
                table.expire(now)
            self._expiring = {r: "" for r in self.model.users}  # ... and walk the rows saved of idle users
        self._expire_saved(now)
        if now - self._last_checkpoint >= self.checkpoint_s:
            self.checkpoint()

    # -- serving --
    def load_users(self, region: str, users: Sequence[str]) -> None:
        """Bring back the saved rows of users who became active again (an idle user's row leaves
        memory at a checkpoint, `evict_idle`); a row idle past `ttl_days` is deleted instead."""
        table = self.model.users[region]
        missing = [u for u in dict.fromkeys(users) if u not in table.index and u not in table.removed]
        if not missing or not self.settings.enabled:
            return
        saved = self.live.store.get_model_rows(region, "user", missing)
        cutoff = self.live.clock() - table.ttl_s if table.ttl_s > 0 else -np.inf
        stale = [u for u, blob in saved.items() if table.seen_of(blob) < cutoff]
        table.removed.update(stale)  # deleted at the next checkpoint
        table.put_rows((u, blob) for u, blob in saved.items() if u not in stale)

    def evict_idle(self) -> int:
        """Rows of users no longer in the live state's cache (of a trainer process: unused for
        `_TRAINER_IDLE_S`) leave memory; they are saved: call after a checkpoint. Returns how many left."""
        if not self.serves:
            cutoff = self.live.clock() - _TRAINER_IDLE_S
            return sum(table.evict([u for u, row in list(table.index.items()) if table.seen[row] < cutoff])
                       for table in self.model.users.values())
        active = self.live.users
        return sum(table.evict([u for u in list(table.index) if u not in active])
                   for table in self.model.users.values())

    def _expire_saved(self, now: float, page: int = 2000) -> None:
        """A page of the saved user rows per tick, while an expiry walk is on: those idle past `ttl_days`
        and not in memory are deleted (rows in memory expire with their table)."""
        for region, after in list(self._expiring.items()):
            table = self.model.users[region]
            rows = self.live.store.model_rows_after(region, "user", after, page)
            if len(rows) < page:
                del self._expiring[region]
            else:
                self._expiring[region] = rows[-1][0]
            if table.ttl_s <= 0:
                continue
            stale = [u for u, blob in rows if u not in table.index and table.seen_of(blob) < now - table.ttl_s]
            if stale:
                self.live.store.save_model_rows(region, "user", [], stale)

    def user_vector(self, region: str, user: str) -> np.ndarray | None:
        """The user's learned vector, or None for a user without one."""
        self.load_users(region, [user])
        if user not in self.model.users[region].index:
            return None
        return self.model.user_vectors([region], [user])[0]

    def forget_user(self, region: str, user: str) -> None:
        """Start the user afresh: drop their embedding row and open joins, and save the removal now."""
        self.joins.forget(user)
        mark = self.live.event_mark[region]
        if mark > self.marks[region] and self.settings.enabled:  # what the follower has not learned yet of them
            self._skip[(region, user)] = mark
            # kept in the user's region too, so that a restart's replay does not learn them either
            self.live.store.save_model_rows(region, SKIP_TABLE, [(user, str(mark).encode())], [])
        self.samples.forget(region, user)
        table = self.model.users[region]
        table.remove([user])
        if self.settings.enabled:  # saved too, whether or not the row was in memory
            self.live.store.save_model_rows(region, "user", [], [user])
            table.removed.discard(user)

    def sync_skips(self) -> None:
        """A trainer process: take the users that a server started afresh (or is erasing) since the
        last call, from the refresh table. Their rows and open joins go; their events up to the mark
        are not learned (the mark's row is deleted once the log is learned past it)."""
        store = self.live.store
        for region in self.marks:
            for user, row in list(store.iter_model_rows(region, SKIP_TABLE)):  # read whole before writing
                key, mark = (region, user), int(row)
                if self._skips_seen.get(key) == mark:
                    continue
                self._skips_seen[key] = mark
                self.joins.forget(user)
                table = self.model.users[region]
                table.remove([user])
                table.removed.discard(user)  # deleted by the server already
                if mark > self.marks[region]:
                    self._skip[key] = max(self._skip.get(key, 0), mark)
                else:  # learned past already (its row just dropped): done with at the next publication
                    self._skips_done[key] = mark

    def items_changed(self, idx: Sequence[int]) -> None:
        if self.settings.enabled and self.serves:
            self.dirty_items.update(dict.fromkeys(idx))

    def retrieve(self, region: str, user: str, k: int) -> np.ndarray:
        """The `k` items nearest the user's vector (best first); none for a user without a row."""
        if 0 < len(self.dirty_items) <= _INLINE_INDEX:
            self.refresh_index()  # a few changed vectors now; more wait for the tick (bounded in time)
        self.load_users(region, [user])
        p = self.model.user_vectors([region], [user])[0]
        if not p.any() or k <= 0:
            return np.zeros(0, np.int64)
        keys, _ = self.index.search(self.model.query(p), k)
        return keys

    def predict(self, region: str, user: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        live = self.live
        self.load_users(region, [user])
        return self.model.predict(live.catalog, region, user, idx, live.clock(), live.totals(), self._popularity(idx))

    def _popularity(self, idx: np.ndarray) -> np.ndarray:
        live = self.live
        return popularity(live.catalog, idx, live.trending.current(idx, live.clock()))

    def gauges(self) -> dict[str, float]:
        learned, fallback = self.duel.scores()
        marks = self.live.event_mark
        behind = sum(max(marks[r] - m, 0) for r, m in self.marks.items()) if self.settings.enabled else 0
        return {"model_version": self.version, "model_lag_seconds": self.lag_s, "model_events_behind": behind,
                "model_examples": self.examples, "model_bad_steps": self.bad_steps,
                "model_healthy": float(self.healthy), "model_loss": self.loss,
                "model_rows": sum(len(t) for t in self.model.tables().values()),
                # the duel's AUCs, once there are enough samples (Prometheus has no "no value yet")
                **({"model_auc": learned, "fallback_auc": fallback} if learned == learned else {})}

    # -- persistence --
    def checkpoint(self) -> None:
        """Publish: the item-side rows changed as one delta (`publication.py`), users' changed rows
        into their region marked with the model version, then the dense state with the watermarks,
        then the version alone (what servers poll); then a snapshot of the item side when due. A
        user's row is not written back once a server erased or refreshed them (the store's guard), and
        leaves memory. Nothing when learning is off: the saved model stays as it was."""
        if not self.settings.enabled:
            return
        store, model = self.live.store, self.model
        self._last_checkpoint = self.live.clock()
        done, self._skips_done = self._skips_done, {}
        self.version = self.publisher.publish(store, model.item_tables(), self.version)
        for region, table in model.users.items():
            rows, removed = table.changes()
            # In slices: each is a write transaction, during which a server's appends to the same
            # file wait (a few ms at most, not the whole publication).
            for lo in range(0, max(len(rows), 1), _PUBLISH_SLICE):
                last = lo + _PUBLISH_SLICE >= len(rows)
                part, gone = rows[lo:lo + _PUBLISH_SLICE], removed if last else []
                if not part and not gone:
                    continue
                refused = store.save_model_rows(region, "user", part, gone, self.version, SKIP_TABLE)
                if refused:
                    table.remove(refused)
                    table.removed.difference_update(refused)
        self.evict_idle()
        store.save_model_blob("model", self.dense_blob())
        store.save_model_blob(VERSION_BLOB, str(self.version).encode())
        self.publisher.compact(store, model.item_tables(), self.live.clock())
        # Refresh marks learned past are done with only now: a restart from an earlier checkpoint
        # must still skip those users' events. A mark a newer refresh replaced stays.
        for region in {r for r, _ in done}:
            store.delete_model_rows_if(region, SKIP_TABLE, [(u, str(m).encode()) for (r, u), m in done.items()
                                                           if r == region])
        for key in done:
            if self._skips_seen.get(key) == done[key]:
                del self._skips_seen[key]

    def dense_blob(self) -> bytes:
        buf = io.BytesIO()
        model = self.model
        header = json.dumps({"marks": self.marks, "version": self.version, "examples": self.examples,
                             "loss": self.loss, "steps": self.steps, "recent_bad": self.recent_bad,
                             "bad_steps": self.bad_steps, "events": self.events}).encode()
        np.savez(buf, weights=model.weights, accum=model.weights_accum, watch=model.watch.counts,
                 header=np.frombuffer(header, np.uint8), duel=self.duel.as_array())
        return buf.getvalue()

    def load(self) -> None:
        """Restore the last checkpoint and the index saved with it (or queue every live item to be
        indexed). The log after the checkpoint's watermark is the log follower's to learn: at once in
        `Engine.open`, or beside the requests in a server, which starts without waiting for it."""
        if not self.settings.enabled:
            return
        store, catalog = self.live.store, self.live.catalog
        blob = store.get_model_blob("model")
        if blob is not None:
            self._restore(blob)
        if self.serves:
            self._resume_index()
            self.model.warm(catalog)
        # A delta of a version never published (killed between the two) would be taken for the next.
        store.keep_model_deltas(0, self.version)
        if self._rows_to_convert:  # into a snapshot, which replaces them
            self.publisher.published = self.version
            self.publisher.compact(store, self.model.item_tables(), self.live.clock(), force=True)
            for name in publication.TABLES:
                store.clear_model_rows(None, name)
            self._rows_to_convert = False
        for region in catalog.regions:  # users started afresh while the follower was behind
            stale = []
            for user, row in store.iter_model_rows(region, SKIP_TABLE):
                if int(row) > self.marks[region]:
                    self._skip[(region, user)] = int(row)
                else:
                    stale.append(user)
            if stale:
                store.save_model_rows(region, SKIP_TABLE, [], stale)
        self._last_checkpoint = self.live.clock()

    def _restore(self, blob: bytes) -> None:
        """A saved model of another width or format is ignored: training starts afresh from the log."""
        if not self._restore_dense(blob, duel=True):
            return
        store, tables = self.live.store, self.model.item_tables()
        for _ in range(10):
            found = publication.snapshot_and_after(store, self.version)
            if found is not None:
                publication.load(tables, *found)
                self.publisher.loaded(self.version, *found)
                return
            if publication.held_as_rows(store):  # saved by a version before deltas
                for name, table in tables.items():
                    table.restore(store.iter_model_rows(None, name))
                self._rows_to_convert = True
                return
            # A newer version was published and its deltas compacted meanwhile: take that one.
            blob = store.get_model_blob("model") or blob
            if not self._restore_dense(blob, duel=True):
                return
        raise RuntimeError("the published model kept changing while it was read; start again")

    def _restore_dense(self, blob: bytes, duel: bool = False) -> bool:
        """The dense weights, the watch histograms and the header's counts and log marks of a saved
        (or published) model, unless it is of another width or format; with `duel`, its duel record."""
        model = self.model
        saved = np.load(io.BytesIO(blob))
        if not {"weights", "accum", "watch", "header"} <= set(saved.files) or (
                saved["weights"].shape != model.weights.shape or saved["watch"].shape != model.watch.counts.shape):
            return False
        header = json.loads(bytes(saved["header"]).decode())
        model.weights[:], model.weights_accum[:] = saved["weights"], saved["accum"]
        model.watch.counts[:] = saved["watch"]
        if duel and "duel" in saved.files:
            self.duel.load(saved["duel"])
        self.marks.update({r: m for r, m in header["marks"].items() if r in self.marks})
        self.version, self.examples = header["version"], header["examples"]
        self.loss, self.steps = header["loss"], header["steps"]
        self.recent_bad, self.bad_steps = header.get("recent_bad", 0.0), header.get("bad_steps", 0)
        self.events = header.get("events", self.events)
        return True
