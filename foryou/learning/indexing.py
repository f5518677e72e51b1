"""The learner's ANN index of item vectors (what learned retrieval searches), kept current beside the
requests: items whose rows changed are re-indexed a bounded slice per tick; a start without a saved
index has a thread build one; a clean stop saves it (`index_file.py`), and the next start loads it and
re-indexes only the items whose rows changed since its version."""

from __future__ import annotations

import logging
import threading
import time
from itertools import islice
from pathlib import Path

import numpy as np

from foryou.config import LearningSettings
from foryou.learning import index_file
from foryou.learning.index_file import INDEX_FILE
from foryou.learning.model import Model
from foryou.retrieval.ann import VectorIndex, make_index
from foryou.state import Live

log = logging.getLogger("foryou.learning")

# Items looked at at once within a budget, and vectors re-inserted at once at most: at a million items
# an HNSW insert cost 0.25-0.7 ms on a quiet machine and up to ~8 ms on a busy one (cache misses).
_INDEX_CHUNK = 256
_INSERT_PART = 8
# An item is re-inserted only once its vector moved this far from the one indexed (relative L2): training
# moves the rows of thousands of items a second (a creator's or a tag's row moves all of its items), and
# re-inserting each took 17% of a server's time at 1M items while never catching up. Retrieval only
# proposes candidates; the ranker scores them with the current rows.
DRIFT = 0.05
_REBUILD_AT = 50_000  # items waiting for the index above which a tick has a thread build a new one
_CLAMPED_MOST = 10  # vectors beyond an index's bound on norms (and 1% of it) that have a thread build a new one
_REBUILD_CHUNK = 50_000
_REBUILD_PART = 5_000  # items a rebuild adds between looks at whether to stop (a few seconds at most)


class IndexUpkeep:
    """The index part of `Learner` (online.py), which sets these fields."""

    live: Live
    settings: LearningSettings
    serves: bool
    model: Model
    version: int
    index: VectorIndex
    dirty_items: dict[int, None]  # items to re-index, oldest change first
    _rebuilding: threading.Thread | None
    _rebuilt: VectorIndex | None
    _meanwhile: set[int]  # items indexed in place while a rebuild runs (queued again at the swap)
    _stop_rebuild: threading.Event
    _rows_to_convert: bool
    insert_s: float = 0.001  # what an insert into the index cost lately, per item

    def _popularity(self, idx: np.ndarray) -> np.ndarray:  # online.py
        raise NotImplementedError

    def refresh_index(self, budget_s: float | None = None) -> None:
        """Put the current vectors of items that trained (or arrived, or went down) into the index,
        oldest change first; with `budget_s`, stop once about that much time is spent. With a budget
        and more than `_REBUILD_AT` items waiting while the index is empty (a start without a saved
        index), a thread builds a new index of them instead, which replaces this one once built (the
        ticks meanwhile go on with what changes after). Otherwise the index is updated where it is:
        an index of only the items waiting would drop every other."""
        catalog = self.live.catalog
        started = time.perf_counter()
        if self._rebuilt is not None:  # a rebuild finished: swap it in, and index again what changed meanwhile
            self.index, self._rebuilt, self._rebuilding = self._rebuilt, None, None
            self.dirty_items.update(dict.fromkeys(self._meanwhile))
        index = self.index
        outgrown = index.clamped > max(_CLAMPED_MOST, len(index) // 100)
        if budget_s is not None and self._rebuilding is None and (
                outgrown or (len(index) == 0 and len(self.dirty_items) > _REBUILD_AT)):
            if outgrown:  # vectors have outgrown the bound on norms the graph was laid out for: all anew
                log.info("the ANN index holds %d vectors longer than it was laid out for: building a new one",
                         index.clamped)
                self.dirty_items.update(dict.fromkeys(np.flatnonzero(catalog.alive[:len(catalog)]).tolist()))
            idx = np.fromiter(self.dirty_items, np.int64, len(self.dirty_items))
            self.dirty_items.clear()
            self._meanwhile.clear()
            self._rebuilding = threading.Thread(target=self._rebuild, args=(idx, index.longest),
                                                name="foryou-index", daemon=True)
            self._rebuilding.start()
            return
        size = _INDEX_CHUNK if budget_s is not None else _REBUILD_CHUNK  # small only to keep to a budget
        while self.dirty_items:
            chunk = list(islice(self.dirty_items, size))
            for i in chunk:
                del self.dirty_items[i]
            if self._rebuilding is not None:  # the new index holds them as they were: again after the swap
                self._meanwhile.update(chunk)
            idx = np.array(chunk, np.int64)
            alive = catalog.alive[idx]
            if (~alive).any():
                self.index.remove(idx[~alive])
            idx = idx[alive]
            vectors = self.model.item_vectors(catalog, idx, self._popularity(idx))
            moved = _moved(self.index.stored(idx), vectors)
            idx, vectors = idx[moved], vectors[moved]
            lo = 0
            while lo < len(idx):
                now = time.perf_counter()
                if budget_s is None:
                    part = len(idx)
                elif now - started >= budget_s:
                    self.dirty_items.update(dict.fromkeys(idx[lo:].tolist()))  # next time
                    return
                else:  # as many as the budget left allows, at the cost inserts had lately (it varies 10x)
                    part = int(min(_INSERT_PART, max(1.0, (budget_s - (now - started)) / self.insert_s)))
                self.index.upsert(idx[lo:lo + part], vectors[lo:lo + part])
                took = (time.perf_counter() - now) / len(idx[lo:lo + part])
                self.insert_s = 0.7 * self.insert_s + 0.3 * took
                lo += part
            if budget_s is not None and time.perf_counter() - started >= budget_s:
                return

    def _rebuild(self, idx: np.ndarray, longest: float = 0.0) -> None:
        """In a thread of its own: a new index of `idx`'s current vectors, laid out for vectors
        `longest` long (the old index's longest). usearch adds without the GIL; the vectors are read
        while the event loop may change rows, and any item indexed in place after the rebuild began is
        queued again at the swap (`_meanwhile`)."""
        catalog = self.live.catalog
        try:
            index = make_index(self.settings.dim + 1, self.settings.index)
            index.reserve(longest)
            idx = idx[catalog.alive[idx]]
            for lo in range(0, len(idx), _REBUILD_PART):
                if self._stop_rebuild.is_set():  # a stop: no thread may be left inside usearch at exit
                    raise InterruptedError("stopped")
                part = idx[lo:lo + _REBUILD_PART]
                index.upsert(part, self.model.item_vectors(catalog, part, self._popularity(part)))
            self._rebuilt = index
        except Exception as exc:  # the items go back to the ticks' queue
            if not self._stop_rebuild.is_set():
                log.error("rebuilding the ANN index failed: %s", exc)
            self.dirty_items.update(dict.fromkeys(idx.tolist()))
            self._rebuilding = None

    def _index_path(self) -> Path:
        return Path(self.live.settings.server.data) / INDEX_FILE

    def save_index(self) -> None:
        """At a clean shutdown, after the checkpoint: the index as of the saved model version, so that
        the next start can load it instead of rebuilding it."""
        path = self._index_path()
        if not self.settings.enabled or not self.serves or not path.parent.is_dir():
            return
        if self.stop_rebuild():  # the next start builds one (or updates the file of an earlier stop)
            return
        self.refresh_index()
        index_file.save(path, self.version, self.index)

    def stop_rebuild(self) -> bool:
        """End a rebuild of the index in progress (at a stop: no thread may be left inside usearch when
        the process exits, which aborts it); returns whether one was ended unfinished (its items are
        queued again)."""
        rebuilding = self._rebuilding
        if rebuilding is None or self._rebuilt is not None:
            return False
        self._stop_rebuild.set()
        rebuilding.join()
        return self._rebuilt is None

    def _resume_index(self) -> None:
        """The index saved at the last clean stop, if it fits these settings and is not newer than the
        model, with the items whose rows changed since its version queued to be indexed again; without
        one, every live item is queued (minutes at a million items, so an older file is worth keeping)."""
        catalog, store = self.live.catalog, self.live.store
        found = index_file.load(self._index_path(), self.index)
        if found is None or not 0 < found[0] <= self.version:
            self.dirty_items.update(dict.fromkeys(np.flatnonzero(catalog.alive[:len(catalog)]).tolist()))
            return
        saved, self.index = found
        if saved < self.version:
            if self._rows_to_convert:  # item rows as an earlier version saved them, one by one
                changed = [k for k, _ in store.model_rows_since(None, "item", saved, self.version)]
            else:
                changed = self.model.items.changed_since(saved)
            index = catalog.index
            self.dirty_items.update(dict.fromkeys(index[k] for k in changed if k in index))


def _moved(stored: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Which of `vectors` differ from the ones indexed (`stored`; NaN rows: not indexed) by more than DRIFT."""
    held = np.isfinite(stored).all(axis=1)
    change = np.linalg.norm(vectors - np.where(held[:, None], stored, 0.0), axis=1)
    return ~held | (change > DRIFT * np.maximum(np.linalg.norm(stored * held[:, None], axis=1), 1e-6))
