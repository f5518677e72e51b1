"""A server's copy of the model that a trainer process publishes: the serving role never trains.

The trainer (`foryou/roles/train.py`) publishes a version every `learning.publish_interval_s`: the
item-side rows it changed as one delta, users' rows marked with the version, then the dense weights
with the log marks they include, then the version alone. Each tick the replica reads that version;
when it moved, it takes the dense weights, the deltas since its own version (`publication.py`; the
snapshot and the deltas after it when a snapshot replaced those), and the users' rows saved since of
the users it holds (the others come with their user, `load_users`), and re-indexes the items whose
rows changed. A step of the event loop holds at most one such swap.

What stays here: the duel, which needs the fallback's view of the user as of before an event (the
interest state a request just moved on). A sampled view is scored by both rankers with the version
served when it was accepted, before the next version (which may have learned it) is taken in. The
duel's record is the server's to save (blob "duel"). The lag (`model_update_lag_seconds`) is from an
event's acceptance to this server serving a version whose marks include it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence

import numpy as np

from foryou.learning import duel, publication
from foryou.learning.online import SKIP_TABLE, VERSION_BLOB, Learner, dense_version

log = logging.getLogger("foryou.learning")

DUEL_BLOB = "duel"
_SAVE_DIRTY_MAX = 20_000  # items still to index above which a stop does not finish the index


class ModelReplica(Learner):
    """`Learner`'s serving side (predict, retrieve, health, gauges), fed by a trainer process."""

    def learn_many(self, region: str, events: Sequence[object], seqs: Sequence[int] | None = None) -> None:
        raise RuntimeError("a server's model replica does not train: the trainer process does")

    def record_served(self, region: str, user: str, items: Sequence[int], now: float) -> None:
        """Nothing: the trainer reads the served rows from the log."""

    def tick(self, now: float) -> None:
        """Re-index a bounded slice of items, and save the duel when due (`poll` is a task of its own)."""
        if not self.settings.enabled:
            return
        self.refresh_index(0.02)
        if now - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            self.checkpoint()

    def published(self) -> int:
        raw = self.live.store.get_model_blob(VERSION_BLOB)
        return int(raw) if raw else 0

    def poll(self) -> bool:
        """Swap in the latest published version; returns whether one came."""
        if not self.settings.enabled:
            return False
        store = self.live.store
        if self.published() <= self.version:
            return False
        blob = store.get_model_blob("model")
        through = dense_version(blob) if blob is not None else 0
        if blob is None or through <= self.version:
            return False
        deltas = publication.chain(store, self.version, through)
        whole = publication.snapshot_and_after(store, through) if deltas is None else None
        if deltas is None and whole is None:  # a snapshot newer than `through` came meanwhile: next tick
            return False
        for region in self.marks:  # the samples accepted under the version served until now
            self._score_both(region, sys.maxsize, duel.READS)  # a few a turn: the server's loop waits
        before = self.version
        if not self._restore_dense(blob):
            return False
        self._take_user_rows(before, self.version)
        tables = self.model.item_tables()
        if whole is not None:  # this server fell behind a snapshot that replaced the deltas it needed
            log.info("model version %d: its deltas since version %d were compacted, reading its snapshot",
                     self.version, before)
            publication.load(tables, *whole)
            self.model.warm(self.live.catalog)
            items: Iterable[str] = self.model.items.changed_since(before)
        else:
            items = publication.apply(tables, deltas or [])
        if self.serves:
            index = self.live.catalog.index
            self.dirty_items.update(dict.fromkeys(index[k] for k in items if k in index))
        now = time.time()
        for region, accepted in self._accepted.items():
            while accepted and accepted[0][0] <= self.marks[region]:
                self.lag_s = now - accepted.popleft()[1]
                self.lag.observe(self.lag_s)
        return True

    def _take_user_rows(self, after: int, through: int) -> None:
        """The rows of users this server holds that versions in (`after`, `through`] changed."""
        store = self.live.store
        for region, table in self.model.users.items():
            rows = store.model_rows_since(region, "user", after, through)
            table.put_rows([(u, row) for u, row in rows if u in table.index])

    def forget_user(self, region: str, user: str) -> None:
        """Start the user afresh: their row goes (here and in the store), and the refresh table tells
        the trainer to drop its copy and not learn their events logged so far."""
        mark = self.live.event_mark[region]
        if self.settings.enabled:
            self.live.store.save_model_rows(region, SKIP_TABLE, [(user, str(mark).encode())], [])
            self.live.store.save_model_rows(region, "user", [], [user])
        self.samples.forget(region, user)
        table = self.model.users[region]
        table.remove([user])
        table.removed.discard(user)

    def checkpoint(self) -> None:
        """The duel's record, and users' rows no longer needed leave memory. The model is the trainer's."""
        if not self.settings.enabled:
            return
        self._last_checkpoint = self.live.clock()
        self.evict_idle()
        self.live.store.save_model_blob(DUEL_BLOB, self.duel.as_array().tobytes())

    def save_index(self) -> None:
        """At a clean stop: the index, unless much of it is still to be built or updated: that would
        hold the stop for minutes at a million items. The file of an earlier stop then stays, and the
        next start loads it and re-indexes what changed since its version. (Deleting it, as this did,
        made every start after a short run rebuild the whole index: 30% of a server's CPU for minutes
        at 1M items, and no learned retrieval meanwhile.)"""
        if self.stop_rebuild() or len(self.dirty_items) > _SAVE_DIRTY_MAX:
            return
        super().save_index()

    def gauges(self) -> dict[str, float]:
        return {**super().gauges(), "model_published_version": float(self.published())}

    def load(self) -> None:
        """The published version, the duel's record, and the ANN index saved at the last clean stop
        (items whose rows changed since it was saved are re-indexed; without one, every item is)."""
        if not self.settings.enabled:
            return
        store = self.live.store
        blob = store.get_model_blob("model")
        if blob is not None:  # with the duel's record an in-process trainer saved, if any ...
            self._restore(blob)
        record = store.get_model_blob(DUEL_BLOB)
        if record is not None:  # ... unless a server saved its own
            self.duel.load(np.frombuffer(record, np.float64).reshape(-1, 2))
        self._resume_index()
        self.model.warm(self.live.catalog)
        self._rows_to_convert = False
        self._last_checkpoint = self.live.clock()
