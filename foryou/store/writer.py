"""Item aggregates written beside the request path, by a thread with a store handle of its own.

At a million items a checkpoint's dirty counters are tens of thousands of rows, whose write held a
server's event loop for 70-400 ms (measured: 20,000 rows in 65-95 ms). The server's checkpoint now only
copies the dirty rows (numpy, about a millisecond) and hands them here; this thread turns them into
rows and writes them. SQLite releases the GIL while it works, and Python hands the GIL back to the
event loop at least every few milliseconds, so requests go on meanwhile. Checkpoints are written in
the order taken, one at a time; a failed write is kept and tried again first, so no changed row is
lost (the live state forgets which rows changed once they are handed over). A
write that keeps failing shows in `flush` (which waits at most a minute) and in the periodic work's
failure counts; at a stop it is given up, and the next start replays the log past the saved marks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from foryou.errors import Unavailable
from foryou.store.base import Store

log = logging.getLogger("foryou.store")


@dataclass
class AggregateCheckpoint:
    """Copies, as of one moment: the dirty items' counters (`idx` -> `stats` rows), each region's
    dirty trend scores, the changed co-engagement rows (item indexes -> encoded rows), the watermarks
    and meta values."""

    idx: np.ndarray
    stats: np.ndarray
    trend: Mapping[str, tuple[np.ndarray, np.ndarray]]
    coengagement: tuple[np.ndarray, np.ndarray]
    watermarks: Mapping[str, tuple[int, int]]
    meta: Mapping[str, str]

    def save(self, store: Store, ids: Sequence[str]) -> None:
        stats = {ids[i]: row for i, row in zip(self.idx.tolist(), self.stats.tolist(), strict=True)}
        trend = {r: {ids[i]: s for i, s in zip(idx.tolist(), scores.tolist(), strict=True)}
                 for r, (idx, scores) in self.trend.items()}
        where, rows = self.coengagement
        coeng = {ids[i]: row.tobytes() for i, row in zip(where.tolist(), rows, strict=True)}
        store.save_item_aggregates(stats, trend, coeng, self.watermarks, self.meta)

    def then(self, later: AggregateCheckpoint) -> AggregateCheckpoint:
        """This checkpoint followed by `later`, as one: counters, scores, co-engagement rows, marks and
        meta as `later` has them where it has them."""
        idx, stats = _latest((self.idx, self.stats), (later.idx, later.stats))
        trend = dict(self.trend)
        for region, (where, scores) in later.trend.items():
            if region in trend:
                both, values = np.concatenate([trend[region][0], where]), np.concatenate([trend[region][1], scores])
                keep = len(both) - 1 - np.unique(both[::-1], return_index=True)[1]
                trend[region] = (both[keep], values[keep])
            else:
                trend[region] = (where, scores)
        return AggregateCheckpoint(idx, stats, trend, _latest(self.coengagement, later.coengagement),
                                   {**self.watermarks, **later.watermarks}, {**self.meta, **later.meta})


Rows = tuple[np.ndarray, np.ndarray]  # keys, and one row per key


def _latest(earlier: Rows, later: Rows) -> Rows:
    """Rows by key (keys, rows), `later`'s where both have a key."""
    if not len(earlier[0]):
        return later
    idx = np.concatenate([earlier[0], later[0]])
    rows = np.concatenate([earlier[1], later[1]]) if len(later[0]) else earlier[1]
    last = len(idx) - 1 - np.unique(idx[::-1], return_index=True)[1]  # each key's latest row
    return idx[last], rows[last]


class AggregateWriter(threading.Thread):
    """`submit` a checkpoint (returns at once); `flush` waits until everything submitted is written;
    `saved` is called (from this thread) with each checkpoint once it is committed."""

    def __init__(self, open_store: Callable[[], Store], ids: Callable[[], Sequence[str]],
                 saved: Callable[[AggregateCheckpoint], None] = lambda _: None) -> None:
        super().__init__(name="foryou-aggregates", daemon=True)
        self.open_store = open_store
        self.ids = ids  # the catalogue's ids (appended to, never changed: safe to read from here)
        self.saved = saved
        self.queue: queue.Queue[AggregateCheckpoint | None] = queue.Queue()
        self.failures = 0
        self.failing: BaseException | None = None  # the write being retried now failed with this
        self._stopping = threading.Event()
        self._store: Store | None = None

    def start(self) -> None:
        self._store = self.open_store()  # here: a store that cannot be opened fails the caller
        super().start()

    def submit(self, checkpoint: AggregateCheckpoint) -> None:
        if not self.is_alive():
            raise Unavailable("the item aggregates' writer is not running")
        self.queue.put(checkpoint)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every submitted checkpoint is written; raise if that takes over `timeout_s` (a
        write failing again and again: the error it fails with)."""
        deadline = time.monotonic() + timeout_s
        done = self.queue.all_tasks_done
        with done:
            while self.queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0 or not self.is_alive():
                    raise Unavailable(f"the item aggregates could not be written: {self.failing or 'writer stopped'}")
                done.wait(min(left, 0.5))

    def stop(self) -> None:
        """Write what is queued (a write still failing is given up: the log holds it, and replay
        after the next start rebuilds it), then end the thread."""
        self._stopping.set()
        self.queue.put(None)
        self.join()

    def run(self) -> None:
        store = self._store
        assert store is not None
        try:
            dropped = False  # a later checkpoint's marks would cover the rows of a dropped one
            while (checkpoint := self.queue.get()) is not None:
                # Those queued behind it are written with it, as one: when writes fall behind (co-engagement
                # at thousands of events a second) the queue would otherwise grow without bound.
                taken, end = 1, False
                while not end:
                    try:
                        later = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    taken += 1
                    if later is None:
                        end = True
                    else:
                        checkpoint = checkpoint.then(later)
                attempt = 0
                while not dropped:
                    try:
                        checkpoint.save(store, self.ids())
                        self.failing = None
                        self.saved(checkpoint)
                        break
                    except Exception as exc:  # kept, and tried again: nothing of it may be lost
                        self.failures += 1
                        self.failing = exc
                        attempt += 1
                        log.error("writing the item aggregates failed (%d in a row): %s", attempt, exc)
                        if self._stopping.wait(min(0.1 * 2 ** attempt, 5.0)):
                            dropped = True  # stopping: the log still holds it all, and replay rebuilds it
                for _ in range(taken):
                    self.queue.task_done()
                if end:
                    return
            self.queue.task_done()
        finally:
            store.close()
