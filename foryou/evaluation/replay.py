"""The engine as a model: an in-memory Engine (a SQLite store in a temporary directory) replayed in
event time, graded through its own `FeedService.scores`, the candidate generation and ranking of a feed
request before feed policy (adjacency, exploration), recording nothing.

The engine ranks only what its candidate sources propose (a few hundred items per request). Items it
did not propose rank after all proposed ones, by training popularity, so that every model ranks the
whole catalogue. The engine learns online: `learn_many` appends events as ingestion does.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Self

import numpy as np

from foryou.config import Settings
from foryou.engine import Engine
from foryou.evaluation.dataset import Catalogue, Events
from foryou.ranking.heuristic import HEADS

REPLAY_BATCH = 10_000
UNPROPOSED = -1e6  # below any value the engine gives (weights may be negative, not this large)


def _scratch_dir() -> str:
    """A temporary directory, in memory where the system has one (SQLite is faster there)."""
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and shm.stat().st_mode & 0o002 else None
    return tempfile.mkdtemp(prefix="foryou-eval-", dir=where)


class _Clock:
    """The engine's clock during replay: the time of the batch being applied, or of the ranking."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ForYouModel:
    """`learned=False`: the engine with its learned models off, i.e. its hand-set ranking alone."""

    heads = HEADS

    def __init__(self, settings: Settings | None = None, seed: int = 0, learned: bool = True) -> None:
        self.settings = settings
        self.seed = seed
        self.learned = learned
        self.name = "foryou" if learned else "foryou_heuristic"

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        self.close()
        self.catalogue_ = catalogue
        self.clock_ = _Clock()
        self.dir_ = _scratch_dir()
        settings = self.settings or Settings()
        # no feed time budget: a wall-clock cut-off would make the grades depend on the machine's speed
        settings = replace(settings, server=replace(settings.server, data=self.dir_, feed_budget_ms=0.0),
                           learning=replace(settings.learning, enabled=self.learned))
        self.engine_ = Engine.open(settings, clock=self.clock_, seed=self.seed)
        self.clock_.now = float(train.ts[0]) if len(train) else 0.0
        self.engine_.items.upsert(list(catalogue.items))
        index = self.engine_.live.catalog.index
        self.to_engine_ = np.array([index[i] for i in catalogue.item_ids], dtype=np.int64)
        self.from_engine_ = np.empty(len(self.engine_.live.catalog), dtype=np.int64)
        self.from_engine_[self.to_engine_] = np.arange(catalogue.n_items)
        self.counts_ = np.zeros(catalogue.n_items)
        self.learn_many(train)
        return self

    def learn_many(self, events: Events) -> None:
        records = events.records(self.catalogue_)
        engine = self.engine_
        for start in range(0, len(records), REPLAY_BATCH):
            batch = records[start:start + REPLAY_BATCH]
            self.clock_.now = batch[-1].ts
            engine.events.append(batch)
        # Co-engagement reaches the store (where the feed reads it) at a checkpoint, and changed item
        # vectors reach the ANN index at the ticks, as in serving.
        engine.live.checkpoint()
        engine.learner.refresh_index()
        self.counts_ = self.counts_ + np.bincount(events.item[events.positive], minlength=len(self.counts_))

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        self.clock_.now = now
        fallback = UNPROPOSED + self._prior()
        out = np.tile(fallback, (len(users), 1))
        ids, feeds, back = self.catalogue_.user_ids, self.engine_.feeds, self.from_engine_
        for row, user in enumerate(users.tolist()):
            idx, values = feeds.scores(ids[user])
            out[row, back[idx]] = values
        return out

    def _prior(self) -> np.ndarray:
        """Popularity by positives (ties by index), scaled into [0, 1)."""
        n = len(self.counts_)
        order = np.lexsort((-np.arange(n), self.counts_))
        rank = np.empty(n)
        rank[order] = np.arange(n)
        return rank / max(n, 1)

    def predict_heads(self, users: np.ndarray, items: np.ndarray, now: float) -> dict[str, np.ndarray]:
        """The ranker's P(action) per head, with the user's state as of `now`."""
        self.clock_.now = now
        feeds = self.engine_.feeds
        out = {head: np.zeros(len(users)) for head in self.heads}
        if not len(users):
            return out
        order = np.argsort(users, kind="stable")
        bounds = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1], True])
        ids = self.catalogue_.user_ids
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            rows = order[lo:hi]
            preds = feeds.predict(ids[int(users[rows[0]])], self.to_engine_[items[rows]])
            for head in self.heads:
                out[head][rows] = preds[head]
        return out

    def close(self) -> None:
        engine = self.__dict__.pop("engine_", None)
        if engine is not None:
            engine.store.close()
        folder = self.__dict__.pop("dir_", None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
