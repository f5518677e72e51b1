"""The item aggregates as their one writer, the trainer process, publishes them to servers.

Why: a server that followed the log itself spent over a quarter of its event loop on it while
ingesting (py-spy at 24,800 events/s: the follower 28%, writing the aggregates' checkpoints most of
the rest of its periodic work), on the one core its requests have; the trainer already read the log
and kept the same counters in a replica of its own. Now the trainer is the aggregates' one writer
(`foryou/roles/train.py`): once a publishing interval it publishes the rows that changed as one
delta, and saves them to the store every `store.checkpoint_interval_s`. A server only reads: each
delta overwrites its rows (counters, trend scores, co-engagement neighbours) with the trainer's,
within about a publishing interval of the log.

A delta is a blob in a ring of `RING` slots ("aggregates@<version % RING>"), then the version alone
("aggregates.version"): a server reads the version, then the slots after its own. A slot that holds
another version means the server fell more than a ring behind: it reloads the aggregates as a start
does (the store's checkpoint, then the log after it). Rows are keyed by item id (a dictionary of the
ids a delta names, and positions into it), so a server whose catalogue lists items in another order
takes them as well.

What a server still counts itself: the impressions it serves (`Items.apply_served`), so that a pool
is not overfilled meanwhile; the trainer's rows, which count the same served rows from the log,
replace them a moment later. A server never decides the pools: the trainer does.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from foryou.catalog import STATS
from foryou.state import coengagement
from foryou.state.fields import StateFields
from foryou.store import Store
from foryou.store.writer import AggregateCheckpoint

log = logging.getLogger("foryou.state")

VERSION_BLOB = "aggregates.version"
RING = 240  # delta slots: two minutes at the default publishing interval (0.5 s)
_VIEWS, _COMPLETIONS = STATS["views"], STATS["completions"]


def slot(version: int) -> str:
    return f"aggregates@{version % RING}"


@dataclass
class Delta:
    """The rows of one publication, as positions into `ids`."""

    version: int
    t0: float  # trend scores' reference time
    marks: dict[str, tuple[int, int]]  # region -> (events, served rows) the rows include, through
    ids: list[str]
    stats_at: np.ndarray  # (n,) int32 positions
    stats: np.ndarray  # (n, len(STATS)) float64
    trend: dict[str, tuple[np.ndarray, np.ndarray]]  # region -> (positions, scores)
    coeng_at: np.ndarray  # (m,) int32 positions
    coeng_nb: np.ndarray  # (m, K) int32 positions, -1 empty
    coeng_w: np.ndarray  # (m, K) float32


def of_checkpoint(version: int, cp: AggregateCheckpoint, ids: list[str], k: int) -> Delta:
    """A delta of the rows a trainer's checkpoint copy holds (its catalogue's indexes; `ids` by index)."""
    where, rows = cp.coengagement
    nb, w = coengagement.decode_array(rows, k)
    named = [cp.idx, where, nb[nb >= 0], *(at for at, _ in cp.trend.values())]
    used = np.unique(np.concatenate([a.astype(np.int64) for a in named]))

    def pos(a: np.ndarray) -> np.ndarray:
        return np.searchsorted(used, a).astype(np.int32)

    nb_at = np.where(nb >= 0, pos(np.maximum(nb, 0)), -1).astype(np.int32)
    return Delta(version, float(cp.meta.get("trend_t0", "0") or 0.0), dict(cp.watermarks),
                 [ids[i] for i in used.tolist()], pos(cp.idx), cp.stats,
                 {r: (pos(at), scores) for r, (at, scores) in cp.trend.items()}, pos(where), nb_at, w)


def encode(d: Delta) -> bytes:
    header = {"version": d.version, "t0": d.t0, "marks": d.marks, "ids": d.ids, "regions": list(d.trend)}
    arrays = {"header": np.frombuffer(orjson.dumps(header), np.uint8), "stats_at": d.stats_at, "stats": d.stats,
              "coeng_at": d.coeng_at, "coeng_nb": d.coeng_nb, "coeng_w": d.coeng_w}
    for k, (at, scores) in enumerate(d.trend.values()):
        arrays[f"trend_at_{k}"], arrays[f"trend_{k}"] = at, scores
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def decode(blob: bytes) -> Delta:
    saved = np.load(io.BytesIO(blob), allow_pickle=False)
    header = orjson.loads(bytes(saved["header"]))
    trend = {r: (saved[f"trend_at_{k}"], saved[f"trend_{k}"]) for k, r in enumerate(header["regions"])}
    return Delta(header["version"], header["t0"], {r: (m[0], m[1]) for r, m in header["marks"].items()},
                 header["ids"], saved["stats_at"], saved["stats"], trend, saved["coeng_at"], saved["coeng_nb"],
                 saved["coeng_w"])


def apply(live: StateFields, d: Delta) -> None:
    """Overwrite a server's rows with the delta's (items it does not know are left out), keeping the
    catalogue-wide sums, topic sums, top lists and pool membership in step."""
    catalog, index = live.catalog, live.catalog.index
    where = np.fromiter((index.get(i, -1) for i in d.ids), np.int64, len(d.ids))
    if len(d.stats_at):
        idx = where[d.stats_at]
        known = idx >= 0
        idx, new = idx[known], d.stats[known]
        width = new.shape[1]
        old = catalog.stats[idx, :width].copy()
        catalog.stats[idx, :width] = new
        live._totals[:width] += (new - old).sum(axis=0)
        catalog.add_topic_counts(idx, new[:, _VIEWS] - old[:, _VIEWS], new[:, _COMPLETIONS] - old[:, _COMPLETIONS])
        live.pools.sync(catalog, idx)
    trending = live.trending
    if d.t0 and d.t0 != trending.t0:
        trending.rebase_to(d.t0)
    for region, (at, scores) in d.trend.items():
        if region in trending.scores and len(at):
            idx = where[at]
            known = idx >= 0
            trending.put(region, idx[known], scores[known])
    if len(d.coeng_at):
        idx = where[d.coeng_at]
        known = idx >= 0
        nb = np.where(d.coeng_nb >= 0, where[np.maximum(d.coeng_nb, 0)], -1).astype(np.int32)
        live.coeng.ensure(len(catalog))
        live.coeng.nb[idx[known]], live.coeng.w[idx[known]] = nb[known], d.coeng_w[known]


class AggregatePublisher:
    """The trainer's side: a delta per call, in the next slot, then the version."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.version = 0
        self.marks: dict[str, tuple[int, int]] = {}

    def load(self) -> None:
        """Go on from the version last published (by an earlier run too)."""
        raw = self.store.get_model_blob(VERSION_BLOB)
        self.version = int(raw) if raw else 0

    def publish(self, cp: AggregateCheckpoint, ids: list[str], k: int) -> bool:
        """Publish the rows of `cp` (nothing when no row changed and the marks did not move)."""
        marks = {r: (int(e), int(s)) for r, (e, s) in cp.watermarks.items()}
        if not (len(cp.idx) or len(cp.coengagement[0]) or any(len(at) for at, _ in cp.trend.values())) \
                and marks == self.marks:
            return False
        version = self.version + 1
        self.store.save_model_blob(slot(version), encode(of_checkpoint(version, cp, ids, k)))
        self.store.save_model_blob(VERSION_BLOB, str(version).encode())
        self.version, self.marks = version, marks
        return True


class AggregateReader:
    """A server's side: `poll` takes the deltas published since its version (at most `most` a call)."""

    def __init__(self, live: StateFields, reload: Callable[[], None]) -> None:
        self.live = live
        self.reload = reload  # () -> None: the aggregates as a start loads them (a ring's gap)
        self.version = 0
        self.marks: dict[str, tuple[int, int]] = {}
        self.reloads = 0

    def published(self) -> int:
        raw = self.live.store.get_model_blob(VERSION_BLOB)
        return int(raw) if raw else 0

    def start(self) -> None:
        """Before the aggregates are loaded: deltas after the version published now come on top."""
        self.version = self.published()

    def loaded(self) -> None:
        """The aggregates were loaded (the store's, then the log after them): they include the log
        through the marks loaded."""
        live = self.live
        self.marks = {r: (live.item_mark[r], live.served_mark[r]) for r in live.catalog.regions}

    def poll(self, most: int | None = None) -> bool:
        """Take up to `most` deltas (None: all that wait); returns whether more wait."""
        latest = self.published()
        if latest < self.version:  # the trainer started over (its model dropped): from the store again
            self._reload(latest)
            return False
        taken = 0
        while self.version < latest and (most is None or taken < most):
            blob = self.live.store.get_model_blob(slot(self.version + 1))
            d = decode(blob) if blob is not None else None
            if d is None or d.version != self.version + 1:  # overwritten: over a ring behind
                self._reload(latest)
                return False
            apply(self.live, d)
            self.version = d.version
            for r, (e, s) in d.marks.items():
                old = self.marks.get(r, (0, 0))
                self.marks[r] = (max(old[0], e), max(old[1], s))
            taken += 1
        return self.version < latest

    def _reload(self, latest: int) -> None:
        log.warning("the item aggregates' deltas since version %d are gone: reloading them from the store",
                    self.version)
        self.reloads += 1
        self.version = latest
        self.reload()
        self.loaded()

    def behind(self, region: str) -> int:
        """Events and served rows this server logged that the aggregates it holds do not include."""
        events, served = self.marks.get(region, (0, 0))
        live = self.live
        return max(live.event_mark[region] - events, 0) + max(live.served_mark[region] - served, 0)

