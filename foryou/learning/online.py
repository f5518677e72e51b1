"""The online trainer: learns from the event log as it is appended, serves the model it learned, and
checkpoints it to the store.

Each accepted batch is learned right after it is appended to the log, before the response, so the next
feed request already ranks with the updated user row (the engine is single-threaded: serving always
reads the model between two training steps, one consistent version). What a view says (completion,
watch quantile, early skip) is learned at once; whether the user then liked, commented, shared or
followed is known only after `join_window_s`, so a view's action labels wait in a join buffer, and a
served item with no view by then becomes an impression without a play.

A training step whose loss is not finite or explodes is dropped and counted, never applied. The model
serves only once healthy: enough examples learned and most recent steps accepted.

After a crash the trainer restores its last checkpoint and re-learns the log from the checkpoint's
watermark. What waited in the join buffer at the crash is lost (a few seconds of delayed labels).
"""

from __future__ import annotations

import io
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from itertools import islice

import numpy as np

from foryou.learning.features import ACTION_HEADS, HEAD, HEADS, VIEW_HEADS
from foryou.learning.model import Examples, Model
from foryou.live import Live
from foryou.retrieval.ann import VectorIndex, make_index
from foryou.signals import completion_mask, early_swipe_mask
from foryou.types import EventRecord

H = len(HEADS)
_NEGATIVE_EVENTS = ("not_interested", "report")
_WARM_STEPS = 20  # steps before the loss average is trusted to judge a step
_REPLAY_CHUNK = 20_000
_INDEX_REFRESH_S = 0.2
_INDEX_BATCH = 2048
_EXPIRE_EVERY_S = 3600.0


class _ExampleList:
    """Examples gathered from one batch of events, as columns."""

    def __init__(self) -> None:
        self.regions: list[str] = []
        self.users: list[str] = []
        self.items: list[int] = []
        self.labels: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.retrieval: list[int] = []

    def add(self, region: str, user: str, item: int, labels: np.ndarray, mask: np.ndarray,
            retrieval: int) -> None:
        self.regions.append(region)
        self.users.append(user)
        self.items.append(item)
        self.labels.append(labels)
        self.masks.append(mask)
        self.retrieval.append(retrieval)

    def build(self) -> Examples:
        n = len(self.items)
        return Examples(self.regions, self.users, np.array(self.items, np.int64),
                        np.array(self.labels, np.float32).reshape(n, H),
                        np.array(self.masks, np.bool_).reshape(n, H), np.array(self.retrieval, np.int64))


def _mask(heads: Sequence[int]) -> np.ndarray:
    m = np.zeros(H, np.bool_)
    m[list(heads)] = True
    return m


_VIEW_MASK = _mask(VIEW_HEADS)
_ACTION_MASK = _mask(tuple(ACTION_HEADS.values()))
_NO_PLAY_MASK = _mask([HEAD["complete"], HEAD["skip"], *ACTION_HEADS.values()])
_NONE = np.zeros(H, np.bool_)


class Learner:
    def __init__(self, live: Live, seed: int = 0) -> None:
        s = live.settings.learning
        self.live = live
        self.settings = s
        self.model = Model(live.catalog.regions, s.dim, s.negatives, s.lr, s.dense_lr, 1e-4, s.min_count,
                           s.ttl_days * 86400.0, seed)
        self.index: VectorIndex = make_index(s.dim + 1, s.index)
        # Join buffers, oldest first: (user, item) -> [time, region, bits of the actions seen].
        self.views: OrderedDict[tuple[str, int], list[object]] = OrderedDict()
        self.served: OrderedDict[tuple[str, int], tuple[float, str]] = OrderedDict()
        self.marks = {r: 0 for r in live.catalog.regions}  # log seq learned through, per region
        self.version = 0
        self.examples = 0
        self.events = 0
        self.bad_steps = 0
        self.recent_bad = 0.0
        self.loss = 0.0
        self.steps = 0
        self.lag_s = 0.0
        self.dirty_items: set[int] = set()
        self._last_refresh = 0.0
        self._last_checkpoint = 0.0
        self._last_expire = 0.0

    @property
    def healthy(self) -> bool:
        return (self.settings.enabled and self.examples >= self.settings.min_examples
                and self.recent_bad < 0.5 and bool(np.isfinite(self.model.weights).all()))

    # -- learning --
    def learn_many(self, region: str, events: Sequence[EventRecord], seqs: Sequence[int] | None = None,
                   accepted: float | None = None) -> None:
        """Learn events just appended to `region`'s log (`seqs`: their log positions). `accepted`: the
        wall time they were accepted, for the lag metric."""
        if not self.settings.enabled or not events:
            return
        catalog = self.live.catalog
        index, duration = catalog.index, catalog.duration_l
        out = _ExampleList()
        view_at: list[int] = []
        watch: list[float] = []
        for e in events:
            i = index.get(e.item)
            if i is None:
                continue
            key = (e.user, i)
            if e.type == "view":
                self.served.pop(key, None)
                self.views[key] = [e.ts, region, 0]
                self.views.move_to_end(key)
                view_at.append(len(out.items))
                watch.append(e.watch_s)
                out.add(region, e.user, i, np.zeros(H, np.float32), _VIEW_MASK, -1)
            elif e.type in ACTION_HEADS:
                head = ACTION_HEADS[e.type]
                pending = self.views.get(key)
                if pending is not None:
                    pending[2] = int(pending[2]) | (1 << head)  # type: ignore[call-overload]
                    out.add(region, e.user, i, np.zeros(H, np.float32), _NONE, 1)
                else:
                    labels = np.zeros(H, np.float32)
                    labels[head] = 1.0
                    out.add(region, e.user, i, labels, _mask([head]), 1)
            elif e.type in _NEGATIVE_EVENTS:
                out.add(region, e.user, i, np.zeros(H, np.float32), _NONE, 0)
        now = max(e.ts for e in events)
        self._closed(now, out)
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
        if seqs:
            self.marks[region] = max(self.marks[region], seqs[-1])
        if accepted is not None:
            self.lag_s = time.time() - accepted

    def record_served(self, region: str, user: str, items: Sequence[int], now: float) -> None:
        for i in items:
            self.served[(user, i)] = (now, region)
            self.served.move_to_end((user, i))

    def _closed(self, now: float, out: _ExampleList) -> None:
        """Examples of the joins whose window closed by `now`: views with their action labels, and
        served items never viewed (impressions without a play)."""
        cutoff = now - self.settings.join_window_s
        while self.views:
            (user, i), (ts, region, bits) = next(iter(self.views.items()))
            if float(ts) > cutoff:  # type: ignore[arg-type]
                break
            del self.views[(user, i)]
            labels = np.array([(int(bits) >> h) & 1 for h in range(H)], np.float32)  # type: ignore[call-overload]
            out.add(str(region), user, i, labels, _ACTION_MASK, -1)
        while self.served:
            (user, i), (ts, region) = next(iter(self.served.items()))
            if ts > cutoff:
                break
            del self.served[(user, i)]
            labels = np.zeros(H, np.float32)
            labels[HEAD["skip"]] = 1.0
            out.add(region, user, i, labels, _NO_PLAY_MASK, -1)

    def _train(self, ex: Examples, now: float) -> None:
        size = max(self.settings.batch_size, 1)
        totals = self.live.totals()
        catalog = self.live.catalog
        for lo in range(0, len(ex.items), size):
            part = Examples(ex.regions[lo:lo + size], ex.users[lo:lo + size], ex.items[lo:lo + size],
                            ex.labels[lo:lo + size], ex.mask[lo:lo + size], ex.retrieval[lo:lo + size])
            step = self.model.gradients(catalog, part, now, totals)
            loss = step.retrieval_loss + step.ranking_loss
            bad = not step.finite() or loss > self.settings.max_loss or (
                self.steps >= _WARM_STEPS and loss > 4 * self.loss)
            self.recent_bad = 0.9 * self.recent_bad + 0.1 * bad
            if bad:
                self.bad_steps += 1
                continue
            self.model.apply(step)
            self.loss = loss if self.steps == 0 else 0.95 * self.loss + 0.05 * loss
            self.steps += 1
            self.version += 1
            self.examples += len(part.items)
            self.dirty_items.update(step.touched.tolist())

    def tick(self, now: float) -> None:
        """Periodic work between requests: close joins, refresh the index, expire idle rows, and
        checkpoint when due."""
        out = _ExampleList()
        self._closed(now, out)
        if out.items:
            self._train(out.build(), now)
        self.refresh_index()
        if now - self._last_expire >= _EXPIRE_EVERY_S:
            self._last_expire = now
            for table in self.model.tables().values():
                table.expire(now)
        if now - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            self.checkpoint()

    # -- serving --
    def refresh_index(self) -> None:
        """Put the current vectors of items that trained (or arrived, or went down) into the index."""
        self._last_refresh = time.perf_counter()
        if not self.dirty_items:
            return
        catalog = self.live.catalog
        idx = np.fromiter(self.dirty_items, np.int64, len(self.dirty_items))
        self.dirty_items = set()
        alive = catalog.alive[idx]
        if (~alive).any():
            self.index.remove(idx[~alive])
        if alive.any():
            self.index.upsert(idx[alive], self.model.item_vectors(catalog, idx[alive]))

    def items_changed(self, idx: Sequence[int]) -> None:
        self.dirty_items.update(idx)

    def retrieve(self, region: str, user: str, k: int) -> np.ndarray:
        """The `k` items nearest the user's vector (best first); none for a user without a row."""
        dirty = len(self.dirty_items)
        if dirty and (dirty <= _INDEX_BATCH or time.perf_counter() - self._last_refresh >= _INDEX_REFRESH_S):
            self.refresh_index()  # a few changed vectors at once; many, at most every _INDEX_REFRESH_S
        p = self.model.user_vectors([region], [user])[0]
        if not p.any() or k <= 0:
            return np.zeros(0, np.int64)
        keys, _ = self.index.search(np.append(p, np.float32(1.0)), k)
        return keys

    def predict(self, region: str, user: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        live = self.live
        return self.model.predict(live.catalog, region, user, idx, live.clock(), live.totals())

    def gauges(self) -> dict[str, float]:
        return {"model_version": self.version, "model_lag_seconds": self.lag_s,
                "model_examples": self.examples, "model_bad_steps": self.bad_steps,
                "model_healthy": float(self.healthy), "model_loss": self.loss,
                "model_rows": sum(len(t) for t in self.model.tables().values())}

    # -- persistence --
    def checkpoint(self) -> None:
        """Changed rows (users' into their region), then the dense state with the watermarks last."""
        store, model = self.live.store, self.model
        self._last_checkpoint = self.live.clock()
        for name, table in model.tables().items():
            rows, removed = table.changes()
            region = name.split(":", 1)[1] if name.startswith("user:") else None
            if rows or removed:
                store.save_model_rows(region, name.split(":", 1)[0], rows, removed)
        buf = io.BytesIO()
        header = json.dumps({"marks": self.marks, "version": self.version, "examples": self.examples,
                             "loss": self.loss, "steps": self.steps}).encode()
        np.savez(buf, weights=model.weights, accum=model.weights_accum, watch=model.watch.counts,
                 header=np.frombuffer(header, np.uint8))
        store.save_model_blob("model", buf.getvalue())

    def load(self) -> None:
        """Restore the last checkpoint, index every live item, and re-learn the log after it."""
        store, model, catalog = self.live.store, self.model, self.live.catalog
        blob = store.get_model_blob("model") if self.settings.enabled else None
        if blob is not None:
            saved = np.load(io.BytesIO(blob))
            if saved["weights"].shape == model.weights.shape:  # else the width changed: start afresh
                header = json.loads(bytes(saved["header"]).decode())
                model.weights[:], model.weights_accum[:] = saved["weights"], saved["accum"]
                model.watch.counts[:] = saved["watch"]
                self.marks.update({r: m for r, m in header["marks"].items() if r in self.marks})
                self.version, self.examples = header["version"], header["examples"]
                self.loss, self.steps = header["loss"], header["steps"]
                for name, table in model.tables().items():
                    region = name.split(":", 1)[1] if name.startswith("user:") else None
                    table.restore(store.iter_model_rows(region, name.split(":", 1)[0]))
        self.dirty_items.update(np.flatnonzero(catalog.alive[:len(catalog)]).tolist())
        self.refresh_index()
        if not self.settings.enabled:
            return
        for region in catalog.regions:
            log = store.events_after(region, self.marks[region])
            while chunk := list(islice(log, _REPLAY_CHUNK)):
                self.learn_many(region, chunk, [e.seq for e in chunk])
        self._last_checkpoint = self.live.clock()
