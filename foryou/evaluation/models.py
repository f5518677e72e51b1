"""The contract every evaluated model keeps, and how the harness turns its scores into ranked lists.

A model is fitted on the events before a point in time and then scores users at that time:

    model.fit(catalogue, train)          # train: only events before `now`; returns the model
    scores = model.score(users, now)     # (len(users), n_items), higher is better

Models that learn online also have `learn_many(events)` (the events since the last fit or learn, in
time order); the daily protocol feeds them each day instead of refitting. Models that predict actions
have `heads` and `predict_heads(users, items, now)`, graded by AUC, GAUC and calibration. Models that
hold resources have `close()`. As in scikit-learn, a constructor stores its arguments and does nothing
else; learned state ends in `_`.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import numpy as np

from foryou.evaluation.dataset import Catalogue, Events

TIE_BREAK = 1e-9  # scores closer than this are ties, broken by the task's popularity prior


@runtime_checkable
class Model(Protocol):
    name: str

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        """Learn from `train` alone (every event before the time of the next `score`)."""
        ...

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        """Scores of every item for each user (user indexes of the catalogue), as of `now`."""
        ...


@runtime_checkable
class Online(Protocol):
    def learn_many(self, events: Events) -> None:
        """Learn the events that happened since the last fit or learn (in time order)."""
        ...


@runtime_checkable
class WithHeads(Protocol):
    heads: tuple[str, ...]

    def predict_heads(self, users: np.ndarray, items: np.ndarray, now: float) -> dict[str, np.ndarray]:
        """P(action) per head for each (users[p], items[p]) pair, as of `now`."""
        ...


@runtime_checkable
class Closeable(Protocol):
    def close(self) -> None: ...


def top_k(scores: np.ndarray, k: int, prior: np.ndarray, excluded_rows: np.ndarray,
          excluded_items: np.ndarray) -> np.ndarray:
    """The indexes of the `k` best items per row, best first: excluded (row, item) pairs never appear
    (unless a row has fewer than `k` others), ties are broken by `prior`, then by item index."""
    key = np.array(scores, dtype=np.float64)  # a copy: the model's array is left alone
    key[~np.isfinite(key)] = -1e300
    key += TIE_BREAK * prior
    key[excluded_rows, excluded_items] = -np.inf
    k = min(k, key.shape[1])
    if k == 0:
        return np.zeros((key.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-key, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(key, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    return np.take_along_axis(part, order, axis=1)
