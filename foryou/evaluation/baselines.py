"""The baselines every ranking is graded against. Each learns from positives only (a completed view, or
a like, comment, share or follow), the same events the engine counts as positive.

- `popularity`: items by how many users had a positive on them. Its heads are each item's rate of the
  action per view (smoothed): what the engine's heads would be without personalisation.
- `recent_popularity`: the same, over the last 10% of the training period.
- `item_knn`: cosine similarity of items' co-engagement (users with a positive on both), each item
  keeping its `neighbours` most similar; a user's score for an item is the sum of its similarities to
  the items the user engaged with.
- `implicit_als`: matrix factorisation of the user x item positives by alternating least squares
  (Hu, Koren and Volinsky 2008), from the `implicit` package.

None of them learns online: the daily protocol refits them at the start of each day.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from foryou.evaluation.dataset import KIND, VIEW, Catalogue, Events
from foryou.evaluation.split import HEADS

MISSING_EXTRA = "foryou evaluate needs the eval extra: pip install 'foryou-engine[eval]'"
EXTRA_MODULES = ("implicit", "scipy", "matplotlib")
PRIOR_VIEWS = 20.0


def require_eval_extra() -> None:
    """Fail early, naming the install command, when the optional dependencies are missing."""
    from importlib.util import find_spec

    from foryou.errors import ForYouError

    missing = [name for name in EXTRA_MODULES if find_spec(name) is None]
    if missing:
        raise ForYouError(f"{MISSING_EXTRA} ({', '.join(missing)} not installed)", field="eval")


def positive_matrix(catalogue: Catalogue, train: Events) -> Any:
    """Users x items CSR matrix (float32) with 1 where the user had a positive on the item."""
    from scipy import sparse

    pos = train.positive
    matrix = sparse.csr_matrix(
        (np.ones(int(pos.sum()), dtype=np.float32), (train.user[pos], train.item[pos])),
        shape=(catalogue.n_users, catalogue.n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def item_rates(catalogue: Catalogue, train: Events, prior_views: float = PRIOR_VIEWS) -> dict[str, np.ndarray]:
    """Per head, each item's rate of the action per view, pulled towards the catalogue's rate by
    `prior_views` pseudo-views."""
    n, view = catalogue.n_items, train.kind == VIEW
    views = np.bincount(train.item[view], minlength=n).astype(np.float64)
    rates = {}
    for head in HEADS:
        done = (view & train.positive) if head == "complete" else train.kind == KIND[head]
        count = np.bincount(train.item[done], minlength=n).astype(np.float64)
        base = (count.sum() + 1.0) / (views.sum() + 2.0)
        rates[head] = np.clip((count + prior_views * base) / (views + prior_views), 0.0, 1.0)
    return rates


class Popularity:
    """Also predicts heads without personalisation (each item's smoothed rate of the action per view):
    the reference for the AUC and GAUC of models whose heads depend on the user."""

    name = "popularity"
    heads = HEADS

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        pos = train.positive
        pairs = np.unique(train.user[pos].astype(np.int64) * catalogue.n_items + train.item[pos])
        self.counts_ = np.bincount(pairs % catalogue.n_items, minlength=catalogue.n_items).astype(np.float64)
        self.rates_ = item_rates(catalogue, train)
        return self

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        return np.broadcast_to(self.counts_, (len(users), len(self.counts_)))

    def predict_heads(self, users: np.ndarray, items: np.ndarray, now: float) -> dict[str, np.ndarray]:
        return {head: rate[items] for head, rate in self.rates_.items()}


class RecentPopularity(Popularity):
    name = "recent_popularity"

    def __init__(self, share: float = 0.1) -> None:
        self.share = share

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        if len(train):
            first, last = float(train.ts[0]), float(train.ts[-1])
            train = train.between(last - self.share * (last - first))
        return super().fit(catalogue, train)


class ItemKNN:
    name = "item_knn"

    def __init__(self, neighbours: int = 100, shrink: float = 0.0) -> None:
        self.neighbours = neighbours
        self.shrink = shrink

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        from scipy import sparse

        x = positive_matrix(catalogue, train)
        self.matrix_ = x
        co = (x.T @ x).tocoo()
        counts = np.asarray(x.sum(axis=0)).ravel()
        off = co.row != co.col
        row, col = co.row[off], co.col[off]
        sim = co.data[off] / (np.sqrt(counts[row] * counts[col]) + self.shrink)
        order = np.lexsort((-sim, row))  # by item, most similar first
        row, col, sim = row[order], col[order], sim[order]
        starts = np.searchsorted(row, np.arange(catalogue.n_items))
        keep = np.arange(len(row)) - starts[row] < self.neighbours
        self.similarity_ = sparse.csr_matrix((sim[keep].astype(np.float32), (row[keep], col[keep])),
                                             shape=(catalogue.n_items, catalogue.n_items))
        return self

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        return np.asarray((self.matrix_[users] @ self.similarity_).toarray(), dtype=np.float64)


class ImplicitALS:
    name = "implicit_als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0,
                 iterations: int = 15, seed: int = 0) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed

    def fit(self, catalogue: Catalogue, train: Events) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit's own threads do the work (and it warns otherwise)
            model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                            alpha=self.alpha, iterations=self.iterations, random_state=self.seed)
            model.fit(positive_matrix(catalogue, train), show_progress=False)
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float64)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float64)
        return self

    def score(self, users: np.ndarray, now: float) -> np.ndarray:
        return self.user_factors_[users] @ self.item_factors_.T
